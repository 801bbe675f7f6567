"""Activation, sign-in with the second factor, sign-out, the account's sessions, the language switch.

The steps follow ``identity.accounts``: every service call runs in ``accounts.transaction``,
which commits failed-attempt counters even when the call raises, and the audit record of a
sign-in (or of a failed one, outcome 4) is written in that same transaction. A sign-in opens a
server-side session (``identity.sessions``) whose token goes into the cookie; sign-out revokes it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy import Connection

from sharedcare.access import care
from sharedcare.access.principals import Principal, PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.identity import accounts, sessions
from sharedcare.identity.accounts import Account
from sharedcare.identity.errors import (
    AccountDisabled,
    AccountLocked,
    EnrolmentIncomplete,
    IdentityError,
    InvalidSecondFactor,
    SecondFactorRequired,
    TooManyAttempts,
)
from sharedcare.portal import csrf
from sharedcare.portal.deps import now, optional_user, signed_in
from sharedcare.portal.i18n import N_, Translator, supported
from sharedcare.portal.messages import identity_error
from sharedcare.portal.pages import flash, language, redirect, render, set_language_cookie
from sharedcare.portal.sessions import (
    ENROL,
    ENROL_SECONDS,
    PENDING_LOGIN,
    PENDING_SECONDS,
    SIGNED_IN,
    PortalUser,
    safe_next,
    start_step,
    step,
)

router = APIRouter(dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]


def _t(request: Request, user: PortalUser | None = None) -> Translator:
    return Translator(language(request, user))


def _refusal(exc: IdentityError) -> tuple[int, dict[str, str]]:
    """Status and headers of a refused attempt: 429 with Retry-After for a lockout."""
    if isinstance(exc, TooManyAttempts) and exc.retry_after:
        return 429, {"Retry-After": str(exc.retry_after)}
    return 400, {}


def _who(account: Account | None) -> Principal | None:
    """The principal an audit record names for an account that may not be usable yet."""
    if account is None:
        return None
    return Principal(
        kind=account.kind,
        subject=account.id,
        display=account.display_name,
        patient_id=account.patient_id,
        practitioner_id=account.practitioner_id,
        practitioner_role_id=account.practitioner_role_id,
        organization_id=account.organization_id,
        profession=account.profession,
    )


def _sign_in_record(
    request: Request,
    who: Principal | None,
    action: audit.AuditAction = audit.AuditAction.LOGIN,
    failure: str | None = None,
    detail: str | None = None,
) -> audit.AuditRecord:
    """A LOGIN or LOGOUT record; a failed sign-in of an unknown login names nobody (the typed
    text may be a password typed in the wrong field)."""
    client = request.client
    record = audit.record_for(
        who or Principal(PrincipalKind.PATIENT, "unknown"),
        action,
        interaction="portal",
        outcome=audit.AuditOutcome.MINOR_FAILURE if failure else audit.AuditOutcome.SUCCESS,
        outcome_desc=failure or detail,
        source_ip=client.host if client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=request.headers.get("x-request-id"),
    )
    if who is None:
        return replace(record, principal_kind="unknown", principal_ref=None)
    return record


def _record_failure(
    conn: Connection, request: Request, login: str | None, account_id: str | None, exc: Exception
) -> None:
    account = None
    if account_id:
        try:
            account = accounts.get_account(conn, account_id)
        except IdentityError:
            account = None
    elif login:
        account = accounts.find_by_login(conn, login)
    code = getattr(exc, "code", type(exc).__name__)
    audit.append(conn, _sign_in_record(request, _who(account), failure=code))


# -- sign-in ---------------------------------------------------------------------------------------
@router.get("/login")
def login_page(
    request: Request, next: str = "", user: PortalUser | None = Depends(optional_user)
) -> Response:
    if user is not None:
        return redirect(safe_next(next))
    return render(request, "login.html", {"next": safe_next(next, ""), "login": ""})


@router.post("/login")
def submit_login(
    request: Request,
    login: Text = "",
    password: Text = "",
    next: Text = "",
    at: datetime = Depends(now),
) -> Response:
    settings = request.app.state.settings
    target = safe_next(next, "")
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            try:
                accounts.authenticate(conn, settings, login=login, password=password, now=at)
            except (SecondFactorRequired, EnrolmentIncomplete):
                raise
            except IdentityError as exc:
                _record_failure(conn, request, login, None, exc)
                raise
    except SecondFactorRequired as exc:
        start_step(request, PENDING_LOGIN, exc.account_id, next=target)
        return redirect("/portal/login/code")
    except EnrolmentIncomplete as exc:
        start_step(request, ENROL, exc.account_id)
        return redirect("/portal/activate/password" if "password" in exc.missing else "/portal/activate/app")
    except IdentityError as exc:
        status, headers = _refusal(exc)
        message = identity_error(_t(request), exc)
        context = {"next": target, "login": login, "error": message}
        return render(request, "login.html", context, status=status, headers=headers)
    return redirect("/portal/login")  # authenticate without a code always raises; never reached


@router.get("/login/code")
def second_factor_page(request: Request) -> Response:
    if step(request, PENDING_LOGIN, PENDING_SECONDS) is None:
        flash(request, N_("Your sign-in took too long. Please start again."))
        return redirect("/portal/login")
    return render(request, "second_factor.html")


@router.post("/login/code")
def second_factor(request: Request, code: Text = "", at: datetime = Depends(now)) -> Response:
    account_id = step(request, PENDING_LOGIN, PENDING_SECONDS)
    if account_id is None:
        flash(request, N_("Your sign-in took too long. Please start again."))
        return redirect("/portal/login")
    settings = request.app.state.settings
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            try:
                account = accounts.verify_second_factor(conn, settings, account_id, code, now=at)
                principal = accounts.principal_for(account)
            except IdentityError as exc:
                _record_failure(conn, request, None, account_id, exc)
                raise
            session_token = sessions.start(
                conn, settings, account.id, user_agent=request.headers.get("user-agent"), now=at
            )
            audit.append(conn, _sign_in_record(request, principal))
    except InvalidSecondFactor as exc:
        return render(request, "second_factor.html", {"error": identity_error(_t(request), exc)}, status=400)
    except IdentityError as exc:
        request.session.pop(PENDING_LOGIN, None)
        status, headers = _refusal(exc)
        context = {"next": "", "login": "", "error": identity_error(_t(request), exc)}
        return render(request, "login.html", context, status=status, headers=headers)
    pending = request.session.get(PENDING_LOGIN) or {}
    target = safe_next(pending.get("next") if isinstance(pending, dict) else None)
    request.session.clear()  # a new session for the signed-in person: nothing carried over
    request.session[SIGNED_IN] = session_token
    csrf.renew(request)
    response = redirect(target)
    set_language_cookie(request, response, account.language)
    return response


@router.post("/logout")
def logout(
    request: Request, user: PortalUser | None = Depends(optional_user), at: datetime = Depends(now)
) -> Response:
    if user is not None:
        with accounts.transaction(request.app.state.engine) as conn:
            sessions.end(conn, request.session.get(SIGNED_IN), sessions.EndReason.SIGN_OUT, now=at)
            audit.append(conn, _sign_in_record(request, user.principal, audit.AuditAction.LOGOUT))
    request.session.clear()
    csrf.renew(request)
    flash(request, N_("You are signed out."))
    return redirect("/portal/login")


# -- the account's sessions ------------------------------------------------------------------------
@router.get("/account")
def account_page(
    request: Request, user: PortalUser = Depends(signed_in), at: datetime = Depends(now)
) -> Response:
    """Every signed-in person's account page: their sessions in force, this one first."""
    with request.app.state.engine.connect() as conn:
        found = sessions.active(conn, request.app.state.settings, user.account.id, at)
    listed = sorted(found, key=lambda s: s.id != user.session.id)
    return render(request, "account.html", {"sessions": listed, "current": user.session.id}, user=user)


@router.post("/account/sessions/end-others")
def end_other_sessions(
    request: Request, user: PortalUser = Depends(signed_in), at: datetime = Depends(now)
) -> Response:
    """Sign out everywhere else: every other session of the account ends, with its app grants."""
    with accounts.transaction(request.app.state.engine) as conn:
        ended = sessions.end_all(
            conn,
            user.account.id,
            sessions.EndReason.OTHER_SESSION,
            keep=request.session.get(SIGNED_IN),
            now=at,
        )
        detail = f"other sessions ended: {ended}"
        audit.append(conn, _sign_in_record(request, user.principal, audit.AuditAction.LOGOUT, detail=detail))
    flash(request, N_("You are signed out everywhere else."))
    return redirect("/portal/account")


# -- activation and enrolment ----------------------------------------------------------------------
@router.get("/activate")
def activation_page(request: Request) -> Response:
    return render(request, "activate.html", {"code": "", "login": "", "contact": ""})


@router.post("/activate")
def activate(
    request: Request,
    code: Text = "",
    login: Text = "",
    contact: Text = "",
    at: datetime = Depends(now),
) -> Response:
    settings = request.app.state.settings
    lang = language(request)
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            account = accounts.activate(
                conn, settings, code=code, matricule_or_login=login, contact=contact, now=at
            )
            accounts.set_language(conn, account.id, lang)  # the language the letter was read in
            if account.patient_id and account.kind == PrincipalKind.PATIENT:
                care.mark_activated(conn, account.patient_id, at)
    except IdentityError as exc:
        status, headers = _refusal(exc)
        context = {
            "code": "",
            "login": login,
            "contact": contact,
            "error": identity_error(_t(request), exc),
        }
        return render(request, "activate.html", context, status=status, headers=headers)
    request.session.pop(PENDING_LOGIN, None)
    start_step(request, ENROL, account.id)
    return redirect("/portal/activate/password")


def _enrolling(request: Request) -> str | None:
    account_id = step(request, ENROL, ENROL_SECONDS)
    if account_id is None:
        flash(request, N_("This step has expired. Please sign in, or activate your account again."))
    return account_id


@router.get("/activate/password")
def password_page(request: Request) -> Response:
    if _enrolling(request) is None:
        return redirect("/portal/login")
    return render(request, "password.html")


@router.post("/activate/password")
def choose_password(
    request: Request, password: Text = "", confirmation: Text = "", at: datetime = Depends(now)
) -> Response:
    account_id = _enrolling(request)
    if account_id is None:
        return redirect("/portal/login")
    settings = request.app.state.settings
    t = _t(request)
    if password != confirmation:
        error = t.gettext("The two passwords are not the same.")
        return render(request, "password.html", {"error": error}, status=400)
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            accounts.set_password(conn, settings, account_id, password, now=at)
    except IdentityError as exc:
        error = identity_error(t, exc, min_length=settings.password_min_length)
        return render(request, "password.html", {"error": error}, status=400)
    return redirect("/portal/activate/app")


@router.get("/activate/app")
def authenticator_page(request: Request) -> Response:
    account_id = _enrolling(request)
    if account_id is None:
        return redirect("/portal/login")
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            secret, _uri, svg = accounts.start_totp_enrolment(conn, account_id)
    except (AccountDisabled, AccountLocked) as exc:
        return render(
            request, "login.html", {"next": "", "login": "", "error": identity_error(_t(request), exc)}
        )
    except EnrolmentIncomplete:
        return redirect("/portal/activate")
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return render(request, "authenticator.html", {"qr": Markup(svg), "secret": grouped, "enrolling": True})


@router.post("/activate/app")
def confirm_authenticator(request: Request, code: Text = "", at: datetime = Depends(now)) -> Response:
    account_id = _enrolling(request)
    if account_id is None:
        return redirect("/portal/login")
    try:
        with accounts.transaction(request.app.state.engine) as conn:
            accounts.confirm_totp(conn, account_id, code, now=at)
    except IdentityError as exc:
        context = {"qr": None, "secret": "", "enrolling": True, "error": identity_error(_t(request), exc)}
        return render(request, "authenticator.html", context, status=400)
    request.session.pop(ENROL, None)
    flash(request, N_("Your account is ready. Sign in with your password and a code from the app."))
    return redirect("/portal/login")


# -- language ----------------------------------------------------------------------------------------
@router.post("/language")
def choose_language(
    request: Request,
    lang: Text = "",
    next: Text = "",
    user: PortalUser | None = Depends(optional_user),
) -> Response:
    chosen = supported(lang)
    response = redirect(safe_next(next))
    if chosen is None:
        return response
    if user is not None:
        with accounts.transaction(request.app.state.engine) as conn:
            accounts.set_language(conn, user.account.id, chosen)
    set_language_cookie(request, response, chosen)
    return response
