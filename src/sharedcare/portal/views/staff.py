"""The agency's pages (§A.8): helpdesk account support and the administrators' delegations.

Agency staff see **metadata only**: an account's status (activated, locked, second factor,
last sign-in) for the helpdesk; a record's delegations (who, kind, legal basis, period) for
administrators, who register a minor's parents and a protected adult's tutor. No page reads the
record itself (no FHIR read: the holder is found by the matricule of their account), and the
access decision gives staff no clinical data on any other path either. Every act and every look
at a holder's delegations is in the audit log. The account or record a page is about is kept in
the sign-in session, never in a URL (a matricule identifies a person).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from sqlalchemy import Connection

from sharedcare.access import consent
from sharedcare.access.principals import PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.identity import accounts
from sharedcare.identity.errors import IdentityError
from sharedcare.identity.models import AccountStatus
from sharedcare.portal import csrf
from sharedcare.portal.deps import now, signed_in
from sharedcare.portal.i18n import N_, Translator
from sharedcare.portal.messages import domain_error, identity_error
from sharedcare.portal.pages import flash, language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser
from sharedcare.portal.views.rights import REPRESENTABLE, Refused, _end_of_day
from sharedcare.storage.engine import writer

router = APIRouter(prefix="/staff", dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]
ACCOUNTS = "/portal/staff/accounts"
DELEGATIONS = "/portal/staff/delegations"
_ACCOUNT = "staff_account"
_HOLDER = "staff_holder"
"""Session keys: the account the helpdesk looks at, the holder whose delegations are shown."""


def agency_staff(user: PortalUser = Depends(signed_in)) -> PortalUser:
    """Helpdesk agents and administrators (account support)."""
    if not user.principal.is_staff:
        raise PortalError(403, N_("This page is for agency staff."))
    return user


def administrator(user: PortalUser = Depends(signed_in)) -> PortalUser:
    if user.principal.kind is not PrincipalKind.ADMIN:
        raise PortalError(403, N_("This page is for agency administrators."))
    return user


def _audit(conn: Connection, user: PortalUser, what: str, patient_id: str | None = None) -> None:
    """A staff act in the log: the holder's own log shows it when it is about their record."""
    audit.append(
        conn,
        audit.record_for(
            user.principal, audit.AuditAction.OPERATION, patient_id=patient_id, interaction=what
        ),
    )


def _account(conn: Connection, account_id: object) -> accounts.Account | None:
    if not isinstance(account_id, str):
        return None
    try:
        return accounts.get_account(conn, account_id)
    except IdentityError:
        return None


# -- helpdesk: account status, unlock, new activation letter ---------------------------------------
@dataclass(frozen=True, slots=True)
class AccountStatusView:
    """What support needs to know about an account, and nothing of the record."""

    account: accounts.Account
    locked: bool
    locked_until: datetime | None
    complete: bool


def _status_view(account: accounts.Account, at: datetime) -> AccountStatusView:
    until = account.locked_until.replace(tzinfo=None) if account.locked_until else None
    temporary = until is not None and until > at
    locked = account.status is AccountStatus.LOCKED or temporary
    complete = account.activated is not None and account.has_password and account.totp_confirmed
    return AccountStatusView(account, locked, until if temporary else None, complete)


def _accounts_page(
    request: Request,
    user: PortalUser,
    at: datetime,
    *,
    error: str | None = None,
    status: int = 200,
    login: str = "",
) -> Response:
    with request.app.state.engine.connect() as conn:
        found = _account(conn, request.session.get(_ACCOUNT))
    context = {"found": _status_view(found, at) if found else None, "error": error, "login": login}
    return render(request, "staff_accounts.html", context, user=user, status=status)


@router.get("/accounts")
def accounts_page(
    request: Request, user: PortalUser = Depends(agency_staff), at: datetime = Depends(now)
) -> Response:
    return _accounts_page(request, user, at)


@router.post("/accounts/find")
def find_account(
    request: Request, login: Text = "", user: PortalUser = Depends(agency_staff), at: datetime = Depends(now)
) -> Response:
    """Look an account up by matricule or login name (in the body: never in a URL)."""
    t = Translator(language(request, user))
    with writer(request.app.state.engine).begin() as conn:
        found = accounts.find_by_login(conn, login.strip())
        if found is not None:
            _audit(conn, user, f"account-status account {found.id}", found.patient_id)
    if found is None:
        request.session.pop(_ACCOUNT, None)
        error = t.gettext("No account uses this matricule or login name.")
        return _accounts_page(request, user, at, error=error, status=404, login=login)
    request.session[_ACCOUNT] = found.id
    return redirect(ACCOUNTS)


def _chosen_account(conn: Connection, request: Request, account_id: str) -> accounts.Account:
    """The account of the form, which must be the one on the page (no blind acts by id)."""
    found = _account(conn, account_id)
    if found is None or request.session.get(_ACCOUNT) != account_id:
        raise Refused(N_("Look the account up first."), 404)
    return found


@router.post("/accounts/unlock")
def unlock(
    request: Request,
    account_id: Text = "",
    user: PortalUser = Depends(agency_staff),
    at: datetime = Depends(now),
) -> Response:
    """Lift the agency's lock or a lockout after failed attempts (``accounts.set_status``)."""
    t = Translator(language(request, user))
    try:
        with writer(request.app.state.engine).begin() as conn:
            account = _chosen_account(conn, request, account_id)
            if account.status is AccountStatus.DISABLED:
                raise Refused(N_("This account is closed: it cannot be unlocked."), 409)
            view = _status_view(account, at)
            if not view.locked:
                raise Refused(N_("This account is not locked."), 409)
            target = AccountStatus.ACTIVE if view.complete else AccountStatus.PENDING
            accounts.set_status(conn, account.id, target, now=at)
            _audit(conn, user, f"account-unlock account {account.id}", account.patient_id)
    except Refused as exc:
        return _accounts_page(request, user, at, error=t.gettext(exc.message), status=exc.status)
    except IdentityError as exc:
        return _accounts_page(request, user, at, error=identity_error(t, exc), status=409)
    flash(request, N_("The account is unlocked."))
    return redirect(ACCOUNTS)


@router.post("/accounts/activation")
def new_activation_letter(
    request: Request,
    account_id: Text = "",
    user: PortalUser = Depends(agency_staff),
    at: datetime = Depends(now),
) -> Response:
    """A new activation code for the letter (earlier unused codes are withdrawn). The page is the
    letter to print and post to the person's address: it is shown once, only a hash is kept."""
    t = Translator(language(request, user))
    try:
        with writer(request.app.state.engine).begin() as conn:
            account = _chosen_account(conn, request, account_id)
            code = accounts.issue_activation_code(conn, account.id, request.app.state.settings, now=at)
            _audit(conn, user, f"activation-letter account {account.id}", account.patient_id)
    except Refused as exc:
        return _accounts_page(request, user, at, error=t.gettext(exc.message), status=exc.status)
    except IdentityError as exc:
        return _accounts_page(request, user, at, error=identity_error(t, exc), status=409)
    days = request.app.state.settings.activation_code_days
    context = {"account": account, "code": code, "days": days, "back": ACCOUNTS}
    return render(request, "staff_letter.html", context, user=user)


# -- administrators: a record's delegations ----------------------------------------------------------
def _holder(conn: Connection, request: Request) -> accounts.Account | None:
    found = _account(conn, request.session.get(_HOLDER))
    return found if found is not None and found.patient_id else None


def _delegations_page(
    request: Request,
    user: PortalUser,
    at: datetime,
    *,
    error: str | None = None,
    status: int = 200,
    typed: dict[str, str] | None = None,
) -> Response:
    with request.app.state.engine.connect() as conn:
        holder = _holder(conn, request)
        rows: list[dict[str, Any]] = []
        if holder is not None:
            assert holder.patient_id is not None
            for r in consent.representations(conn, patient_id=holder.patient_id, now=at):
                who = _account(conn, r.account_id)
                rows.append(
                    {
                        "delegation": r,
                        "name": who.display_name if who else "",
                        "login": who.login if who else "",
                    }
                )
    context = {
        "holder": holder,
        "delegations": rows,
        "kinds": consent.AGENCY_KINDS,
        "typed": typed or {"holder": "", "login": "", "kind": "", "ends": "", "legal_basis": ""},
        "error": error,
    }
    return render(request, "staff_delegations.html", context, user=user, status=status)


@router.get("/delegations")
def delegations_page(
    request: Request, user: PortalUser = Depends(administrator), at: datetime = Depends(now)
) -> Response:
    return _delegations_page(request, user, at)


@router.post("/delegations/find")
def find_holder(
    request: Request,
    holder: Text = "",
    user: PortalUser = Depends(administrator),
    at: datetime = Depends(now),
) -> Response:
    """The holder by the matricule of their account; looking at their delegations is audited."""
    t = Translator(language(request, user))
    with writer(request.app.state.engine).begin() as conn:
        found = accounts.find_by_login(conn, holder.strip())
        if found is not None and found.kind is PrincipalKind.PATIENT and found.patient_id:
            _audit(conn, user, "staff-list-delegations", found.patient_id)
        else:
            found = None
    if found is None:
        request.session.pop(_HOLDER, None)
        typed = {"holder": holder, "login": "", "kind": "", "ends": "", "legal_basis": ""}
        error = t.gettext("No record holder has this matricule.")
        return _delegations_page(request, user, at, error=error, status=404, typed=typed)
    request.session[_HOLDER] = found.id
    return redirect(DELEGATIONS)


@router.post("/delegations")
def register(
    request: Request,
    login: Text = "",
    kind: Text = "",
    ends: Text = "",
    legal_basis: Text = "",
    user: PortalUser = Depends(administrator),
    at: datetime = Depends(now),
) -> Response:
    """Register a minor's parent or a protected adult's tutor, with the legal basis and the end."""
    t = Translator(language(request, user))
    typed = {"holder": "", "login": login, "kind": kind, "ends": ends, "legal_basis": legal_basis}
    try:
        with writer(request.app.state.engine).begin() as conn:
            holder = _holder(conn, request)
            if holder is None or holder.patient_id is None:
                raise Refused(N_("Look the record holder up first."), 404)
            if kind not in consent.AGENCY_KINDS:
                raise Refused(N_("Choose the kind of representative."))
            basis = legal_basis.strip()[:500]
            if not basis:
                raise Refused(
                    N_("Give the legal basis, for example the birth certificate or the court decision.")
                )
            end = _end_of_day(ends)
            representative = accounts.find_by_login(conn, login.strip())
            if representative is None:
                raise Refused(N_("No account uses this matricule or login name."), 404)
            if representative.id == holder.id:
                raise Refused(N_("The holder cannot represent themselves."))
            if representative.kind not in REPRESENTABLE:
                raise Refused(
                    N_("This account cannot represent anyone: ask for the login of a personal account.")
                )
            consent.appoint(
                conn,
                request.app.state.fhir,
                user.principal,
                holder.patient_id,
                representative.id,
                kind,
                at,
                ends=end,
                legal_basis=basis,
            )
    except Refused as exc:
        return _delegations_page(
            request, user, at, error=t.gettext(exc.message), status=exc.status, typed=typed
        )
    except consent.ChoiceError as exc:
        return _delegations_page(request, user, at, error=domain_error(t, exc), status=409, typed=typed)
    flash(request, N_("The representative is registered."))
    return redirect(DELEGATIONS)


@router.post("/delegations/end")
def end_delegation(
    request: Request,
    delegation_id: Text = "",
    user: PortalUser = Depends(administrator),
    at: datetime = Depends(now),
) -> Response:
    """End a delegation of the holder on the page (a court decision, a mistake)."""
    t = Translator(language(request, user))
    try:
        with writer(request.app.state.engine).begin() as conn:
            holder = _holder(conn, request)
            shown = (
                {r.id for r in consent.representations(conn, patient_id=holder.patient_id, now=at)}
                if holder is not None and holder.patient_id
                else set()
            )
            if delegation_id not in shown:
                raise Refused(N_("There is no such representative"), 404)
            consent.remove_delegation(conn, request.app.state.fhir, user.principal, delegation_id, at)
    except Refused as exc:
        return _delegations_page(request, user, at, error=t.gettext(exc.message), status=exc.status)
    except consent.ChoiceError as exc:
        return _delegations_page(request, user, at, error=domain_error(t, exc), status=409)
    flash(request, N_("The delegation is ended."))
    return redirect(DELEGATIONS)
