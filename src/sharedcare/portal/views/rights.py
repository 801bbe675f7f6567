"""The access-rights page ("profile configurator") of the holder or their representative.

It shows who has access and why, and changes the holder's choices through ``access.consent``
and ``access.care``: each change runs in one writer transaction with the unrestricted FHIR
service (the choice is the holder's Consent, written by the platform) and is refused with the
module's own message when it cannot be made. Restricting access (block, hide, revoke, close)
needs the holder to confirm the health-risk warning first (§A.4: the holder is told the risks).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from sqlalchemy import Connection, select

from sharedcare.access import care, consent
from sharedcare.access.models import delegation
from sharedcare.access.principals import PrincipalKind
from sharedcare.audit import log as audit
from sharedcare.fhir.errors import FhirError
from sharedcare.identity import accounts
from sharedcare.identity.errors import IdentityError
from sharedcare.portal import csrf, records
from sharedcare.portal.deps import holder_side, now
from sharedcare.portal.i18n import N_, TIMEZONE, Translator
from sharedcare.portal.messages import domain_error
from sharedcare.portal.pages import flash, language, redirect, render
from sharedcare.portal.sessions import PortalError, PortalUser, safe_next
from sharedcare.portal.views import autonomy
from sharedcare.storage.engine import writer

router = APIRouter(prefix="/access", dependencies=[Depends(csrf.require_csrf)])
Text = Annotated[str, Form()]
_REFERENCE = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAIN = "/portal/access"
REPRESENTABLE = (PrincipalKind.PATIENT, PrincipalKind.REPRESENTATIVE)


class Refused(Exception):
    """An action refused by the portal itself (missing confirmation, malformed input)."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.message = message
        self.status = status
        super().__init__(message)


@dataclass
class Holder:
    """A professional or organisation with access to the record, and every reason why."""

    reference: str
    name: str
    reasons: list[care.Relationship] = field(default_factory=list)
    blocked: bool = False
    hidden: int = 0

    @property
    def practitioner_id(self) -> str | None:
        kind, _, rid = self.reference.partition("/")
        return rid if kind == "Practitioner" else None


# -- reading ---------------------------------------------------------------------------------------
def _practitioner_ref(practitioner_id: str | None) -> str | None:
    return f"Practitioner/{practitioner_id}" if practitioner_id else None


def overview(request: Request, user: PortalUser, at: datetime) -> dict[str, Any]:
    """Everything the main page shows about the record's access rights."""
    assert user.record is not None
    with request.app.state.engine.connect() as conn:
        relationships = care.of_patient(conn, user.record, at)
        choices = consent.choices(conn, user.record, at)
        status = consent.status(conn, user.record)
        delegates = _delegates(conn, choices)
    refs = {
        ref
        for r in relationships
        for ref in (_practitioner_ref(r.practitioner_id), f"Organization/{r.organization_id}")
        if ref and not ref.endswith("/None")
    } | {f"Practitioner/{c.practitioner_id}" for c in choices if c.practitioner_id}
    names = records.directory_names(request, refs)
    holders: dict[str, Holder] = {}

    def holder(ref: str) -> Holder:
        return holders.setdefault(ref, Holder(ref, names.get(ref) or ref))

    for rel in relationships:
        ref = _practitioner_ref(rel.practitioner_id) or f"Organization/{rel.organization_id}"
        holder(ref).reasons.append(rel)
    blocked, hidden = [], []
    for choice in choices:
        chosen = _practitioner_ref(choice.practitioner_id)
        if choice.kind == "block" and chosen:
            blocked.append(holder(chosen))
            holder(chosen).blocked = True
        elif choice.kind == "mask" and chosen:
            holder(chosen).hidden += 1
            hidden.append(choice)
    with_access = [h for h in holders.values() if h.reasons]
    with_access.sort(key=lambda h: (h.blocked, h.name.lower()))
    hidden_titles = _item_titles(request, user) if hidden else {}
    return {
        "status": status,
        "with_access": with_access,
        "blocked": sorted(blocked, key=lambda h: h.name.lower()),
        "hidden": hidden,
        "hidden_titles": hidden_titles,
        "names": names,
        "delegates": delegates,
        "kinds": consent.DELEGATION_KINDS,
        "found": None,
        "search": "",
        "appoint": {"login": "", "kind": "", "ends": "", "legal_basis": ""},
        "minor": autonomy.holder_section(request, user, at),
    }


def _delegates(conn: Connection, choices: list[consent.Choice]) -> list[dict[str, Any]]:
    """The record's representatives with their name, kind and legal basis."""
    wanted = [c for c in choices if c.kind == "delegation" and c.account_id]
    d = delegation
    rows = {
        r.id: r
        for r in conn.execute(
            select(d.c.id, d.c.kind, d.c.legal_basis).where(d.c.id.in_([c.id for c in wanted]))
        )
    }
    out = []
    for choice in wanted:
        try:
            name = accounts.get_account(conn, choice.account_id or "").display_name
        except IdentityError:
            name = ""
        row = rows.get(choice.id)
        kind, basis = (row.kind, row.legal_basis) if row is not None else ("", None)
        out.append({"choice": choice, "name": name, "kind": kind, "legal_basis": basis})
    return out


def _item_titles(request: Request, user: PortalUser) -> dict[str, records.Item]:
    assert user.record is not None
    return {i.reference: i for i in records.record_items(records.view(request, user), user.record)}


def professional_overview(
    request: Request, user: PortalUser, practitioner_id: str, at: datetime
) -> dict[str, Any]:
    """What the page of one professional shows: their access, block, grant and hidden items."""
    assert user.record is not None
    ref = f"Practitioner/{practitioner_id}"
    names = records.directory_names(request, [ref]) if _ID.match(practitioner_id) else {}
    if ref not in names:
        raise PortalError(404, N_("This professional is not in the national directory."))
    with request.app.state.engine.connect() as conn:
        relationships = [
            r for r in care.of_patient(conn, user.record, at) if r.practitioner_id == practitioner_id
        ]
        choices = [c for c in consent.choices(conn, user.record, at) if c.practitioner_id == practitioner_id]
    items = records.record_items(records.view(request, user), user.record)
    hidden = {c.resource for c in choices if c.kind == "mask" and c.resource}
    return {
        "practitioner_id": practitioner_id,
        "name": names[ref],
        "reasons": relationships,
        "permanent": any(c.kind == "permanent" for c in choices),
        "blocked": any(c.kind == "block" for c in choices),
        "hidden": [i for i in items if i.reference in hidden]
        + [records.Item(r, r.split("/")[0], "", None) for r in sorted(hidden - {i.reference for i in items})],
        "items": [i for i in items if i.reference not in hidden],
    }


# -- pages -------------------------------------------------------------------------------------------
@router.get("")
def access_page(
    request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    return render(request, "access.html", overview(request, user, at), user=user)


@router.post("/find")
def find_professional(
    request: Request, name: Text = "", user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    """Search the directory by name (in the POST body: a name says who the holder consults)."""
    context = overview(request, user, at)
    words = [w for w in name.split() if w][:5]
    context["search"] = name
    context["found"] = records.find_practitioners(request, words) if words else []
    context["back"] = MAIN
    return render(request, "access.html", context, user=user)


@router.get("/professional/{practitioner_id}")
def professional_page(
    request: Request,
    practitioner_id: str,
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    context = professional_overview(request, user, practitioner_id, at)
    return render(request, "access_professional.html", context, user=user)


def _show_again(
    request: Request,
    user: PortalUser,
    back: str,
    at: datetime,
    error: str,
    status: int,
    keep: dict[str, Any] | None = None,
) -> Response:
    """The page the refused form came from, with the reason and what was typed; nothing changed."""
    prefix = f"{MAIN}/professional/"
    if back.startswith(prefix):
        context = professional_overview(request, user, back.removeprefix(prefix), at)
        template = "access_professional.html"
    else:
        context = overview(request, user, at)
        template = "access.html"
    context.update(keep or {}, back=back, error=error)
    return render(request, template, context, user=user, status=status)


def _change(
    request: Request,
    user: PortalUser,
    at: datetime,
    back: str,
    done: str,
    act: Callable[[Connection], object],
    check: Callable[[], object] | None = None,
    keep: dict[str, Any] | None = None,
) -> Response:
    """Run one change of the holder's choices in a writer transaction; show the outcome.

    ``check`` runs first, outside the transaction: its reads go through the user's own audited
    session, which takes a transaction of its own (on SQLite, a second writer would wait forever
    for the first).
    """
    target = safe_next(back, MAIN)
    if not target.startswith(MAIN):
        target = MAIN
    t = Translator(language(request, user))
    try:
        if check is not None:
            check()
        with writer(request.app.state.engine).begin() as conn:
            act(conn)
    except Refused as exc:
        return _show_again(request, user, target, at, t.gettext(exc.message), exc.status, keep)
    except (consent.ChoiceError, care.CareError) as exc:
        return _show_again(request, user, target, at, domain_error(t, exc), 409, keep)
    flash(request, done)
    return redirect(target)


def _confirmed(understood: str) -> None:
    if understood != "yes":
        raise Refused(
            N_("Please read the warning about the health risks and confirm it before restricting access.")
        )


def _practitioner(practitioner_id: str) -> str:
    if not _ID.match(practitioner_id):
        raise Refused(N_("This professional is not in the national directory."), 404)
    return practitioner_id


# -- permanent access, blocks, hidden items --------------------------------------------------------------
@router.post("/grant")
def grant(
    request: Request,
    practitioner: Text = "",
    back: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        consent.grant_permanent(conn, request.app.state.fhir, user.principal, user.record, practitioner, at)

    return _change(
        request, user, at, back, N_("Permanent access granted."), act, lambda: _known(request, practitioner)
    )


@router.post("/revoke")
def revoke(
    request: Request,
    practitioner: Text = "",
    understood: Text = "",
    back: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        _confirmed(understood)
        ended = consent.revoke_permanent(
            conn, request.app.state.fhir, user.principal, user.record, _practitioner(practitioner), at
        )
        if not ended:
            raise Refused(N_("This professional has no permanent access to revoke."), 409)

    return _change(request, user, at, back, N_("Permanent access revoked."), act)


@router.post("/block")
def block(
    request: Request,
    practitioner: Text = "",
    understood: Text = "",
    back: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def check() -> None:
        _confirmed(understood)
        _known(request, practitioner)

    def act(conn: Connection) -> None:
        assert user.record is not None
        consent.block(conn, request.app.state.fhir, user.principal, user.record, practitioner, at)

    done = N_("The professional is blocked: they can no longer open your record.")
    return _change(request, user, at, back, done, act, check)


@router.post("/unblock")
def unblock(
    request: Request,
    practitioner: Text = "",
    back: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        consent.unblock(
            conn, request.app.state.fhir, user.principal, user.record, _practitioner(practitioner), at
        )

    return _change(request, user, at, back, N_("The professional is no longer blocked."), act)


def _own_item(request: Request, user: PortalUser, reference: str) -> str:
    """``reference`` if it is an item of the record the user sees (one audited search)."""
    if not _REFERENCE.match(reference):
        raise Refused(N_("Choose an item of your record."))
    assert user.record is not None
    rtype, _, rid = reference.partition("/")
    service = records.view(request, user)
    try:
        query = service.parse_search(rtype, [("_id", rid)], strict=True)
        found = service.search(query, compartment=user.record).matches
    except FhirError:
        found = []
    if not found:
        raise Refused(N_("Choose an item of your record."))
    return reference


@router.post("/hide")
def hide(
    request: Request,
    practitioner: Text = "",
    reference: Text = "",
    understood: Text = "",
    back: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def check() -> None:
        _confirmed(understood)
        _known(request, practitioner)
        _own_item(request, user, reference)

    def act(conn: Connection) -> None:
        assert user.record is not None
        consent.mask(conn, request.app.state.fhir, user.principal, user.record, practitioner, reference, at)

    return _change(request, user, at, back, N_("The item is hidden from this professional."), act, check)


@router.post("/unhide")
def unhide(
    request: Request,
    practitioner: Text = "",
    reference: Text = "",
    back: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        if not _REFERENCE.match(reference):
            raise Refused(N_("Choose an item of your record."))
        consent.unmask(
            conn,
            request.app.state.fhir,
            user.principal,
            user.record,
            _practitioner(practitioner),
            reference,
            at,
        )

    return _change(request, user, at, back, N_("The professional can see the item again."), act)


def _known(request: Request, practitioner_id: str) -> str:
    """A professional of the national directory (choices name only real professionals)."""
    ref = f"Practitioner/{_practitioner(practitioner_id)}"
    if ref not in records.directory_names(request, [ref]):
        raise Refused(N_("This professional is not in the national directory."), 404)
    return practitioner_id


# -- connection code ---------------------------------------------------------------------------------
@router.post("/code")
def connection_code(
    request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    """A one-time code for a consultation; it is shown once and only its hash is kept."""
    assert user.record is not None
    settings = request.app.state.settings
    with writer(request.app.state.engine).begin() as conn:
        code = care.issue_connection_code(conn, settings, user.record, at)
        audit.append(
            conn,
            audit.record_for(
                user.principal,
                audit.AuditAction.CONSENT_CHANGE,
                patient_id=user.record,
                interaction="issue-connection-code",
            ),
        )
    expires = at + timedelta(minutes=settings.connection_code_minutes)
    context = {"code": code, "expires": expires, "minutes": settings.connection_code_minutes, "back": MAIN}
    return render(request, "connection_code.html", context, user=user)


# -- representatives ---------------------------------------------------------------------------------
DELEGATION_MESSAGES = (
    N_("A DSP assistant is appointed for a limited time: give the end date"),
    N_("Give the legal basis of the delegation"),
    N_("A parent represents only a minor: this holder is 18 or older"),
    N_("A parent's delegation ends at the latest on the child's 18th birthday"),
    N_("The agency registers only parents and guardians"),
)
"""The messages of ``consent.appoint``'s rules (§A.7), for extraction and translation."""


def _end_of_day(value: str) -> datetime | None:
    """The end of a date typed in a date field, in Luxembourg, as naive UTC; None when empty."""
    if not value.strip():
        return None
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise Refused(N_("Give the end date as a date, for example 2027-12-31.")) from None
    local = datetime.combine(day + timedelta(days=1), time.min, tzinfo=TIMEZONE)
    return local.astimezone(UTC).replace(tzinfo=None)


@router.post("/representatives")
def appoint(
    request: Request,
    login: Text = "",
    kind: Text = "",
    ends: Text = "",
    legal_basis: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        if kind not in consent.DELEGATION_KINDS:
            raise Refused(N_("Choose the kind of representative."))
        end = _end_of_day(ends)
        account = accounts.find_by_login(conn, login)
        if account is None:
            raise Refused(N_("No account uses this matricule or login name."), 404)
        if account.id == user.account.id:
            raise Refused(N_("You cannot appoint yourself."))
        if account.kind not in REPRESENTABLE:
            raise Refused(
                N_("This account cannot represent anyone: ask for the login of a personal account.")
            )
        if kind == "assistant" and (end is None or not legal_basis.strip()):
            raise Refused(
                N_("A DSP assistant is appointed for a limited time: give the end date and the legal basis.")
            )
        consent.appoint(
            conn,
            request.app.state.fhir,
            user.principal,
            user.record,
            account.id,
            kind,
            at,
            ends=end,
            legal_basis=legal_basis.strip()[:500] or None,
        )

    typed = {"login": login, "kind": kind, "ends": ends, "legal_basis": legal_basis}
    return _change(
        request, user, at, MAIN, N_("The representative is appointed."), act, keep={"appoint": typed}
    )


@router.post("/representatives/remove")
def remove_representative(
    request: Request,
    delegation_id: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        mine = {c.id for c in consent.choices(conn, user.record, at) if c.kind == "delegation"}
        if delegation_id not in mine:
            raise Refused(N_("There is no such representative"), 404)
        consent.remove_delegation(conn, request.app.state.fhir, user.principal, delegation_id, at)

    return _change(request, user, at, MAIN, N_("The representative is removed."), act)


# -- closing and reopening ---------------------------------------------------------------------------
@router.post("/close")
def close(
    request: Request,
    understood: Text = "",
    user: PortalUser = Depends(holder_side),
    at: datetime = Depends(now),
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        _confirmed(understood)
        if consent.status(conn, user.record) == "closed":
            raise Refused(N_("The record is already closed."), 409)
        consent.close_record(conn, user.principal, user.record, at)

    return _change(request, user, at, MAIN, N_("Your record is closed."), act)


@router.post("/reopen")
def reopen(
    request: Request, user: PortalUser = Depends(holder_side), at: datetime = Depends(now)
) -> Response:
    def act(conn: Connection) -> None:
        assert user.record is not None
        consent.reopen_record(conn, request.app.state.settings, user.principal, user.record, at)

    return _change(request, user, at, MAIN, N_("Your record is open again."), act)
