"""The ``sharedcare`` command: serve, migrate, import, seed, bench."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import typer

from sharedcare.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = typer.Typer(help="SharedCare national shared health record platform.", no_args_is_help=True)
_log = logging.getLogger("sharedcare.worker")


def _engine():  # type: ignore[no-untyped-def]
    from sharedcare.storage.engine import make_engine

    return make_engine(get_settings().effective_database_url)


@app.command()
def migrate() -> None:
    """Apply database migrations up to the newest schema."""
    from sharedcare.storage.migrate import upgrade

    upgrade(_engine())
    typer.echo("Database schema is up to date.")


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default: SHAREDCARE_HOST)"),
    port: int = typer.Option(None, help="Port (default: SHAREDCARE_PORT)"),
    workers: int = typer.Option(1, help="Worker processes"),
) -> None:
    """Migrate, load demo data on first start (if enabled), and serve HTTP."""
    import uvicorn

    from sharedcare.storage.migrate import upgrade

    settings = get_settings()
    engine = _engine()
    upgrade(engine)
    if settings.demo_data:
        from sharedcare.demo.load import load_demo_if_empty

        loaded = load_demo_if_empty(engine)
        if loaded:
            typer.echo(f"Loaded demo data: {loaded} resources.")
    _announce_demo_client(engine, settings)
    base = f"http://{host or settings.host}:{port or settings.port}"
    if settings.demo_data:
        _announce_demo_accounts(engine, settings, base)
    typer.echo(f"SharedCare FHIR API on {base}/fhir, portal on {base}/portal/login")
    uvicorn.run(
        "sharedcare.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level,
    )


def _announce_demo_client(engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Register the operators' client ``demo-system`` and say how to get a token with it."""
    from sharedcare.oauth.clients import ensure_demo_client
    from sharedcare.storage.engine import writer

    with writer(engine).begin() as conn:
        generated = ensure_demo_client(conn, settings)
    secret = generated or "$SHAREDCARE_DEMO_CLIENT_SECRET"
    base = f"http://{settings.host}:{settings.port}"
    typer.echo("System client demo-system (system/*.*), token endpoint /auth/token:")
    form = "-d grant_type=client_credentials -d 'scope=system/*.*'"
    typer.echo(f"  curl -u demo-system:{secret} {form} {base}/auth/token")
    if generated:
        typer.echo("  (secret generated for this start; set SHAREDCARE_DEMO_CLIENT_SECRET to keep one)")


def _announce_demo_accounts(engine, settings, base: str) -> None:  # type: ignore[no-untyped-def]
    """Create the demo accounts of each role (idempotent) and print how to sign in as each."""
    from sharedcare.demo.accounts import ensure_demo_accounts, format_logins

    logins = ensure_demo_accounts(engine, settings)
    if logins:
        typer.echo(format_logins(logins, base))


@app.command()
def seed() -> None:
    """Load (or refresh) the Luxembourg demo population."""
    from sharedcare.demo.load import load_demo

    engine = _engine()
    from sharedcare.storage.migrate import upgrade

    upgrade(engine)
    count = load_demo(engine)
    typer.echo(f"Demo data loaded: {count} resources.")
    settings = get_settings()
    _announce_demo_accounts(engine, settings, f"http://{settings.host}:{settings.port}")


@app.command("import")
def import_(
    paths: list[Path] = typer.Argument(..., help="Bundle JSON, NDJSON(.gz), or .tar.xz/.tar.gz archives"),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip validation (trusted sources)"),
) -> None:
    """Import FHIR data files, with a progress bar and a summary of counts and errors."""
    from sharedcare.access.policy import category_of
    from sharedcare.fhir.importer import run_import_cli
    from sharedcare.storage.migrate import upgrade

    engine = _engine()
    upgrade(engine)
    raise typer.Exit(run_import_cli(engine, paths, validate=not no_validate, classify=category_of))


@app.command()
def reclassify() -> None:
    """Recompute every resource's data category (after a change of the classification rules)."""
    from sharedcare.access.reclassify import reclassify as run
    from sharedcare.storage.engine import writer

    engine = _engine()
    with writer(engine).begin() as conn:
        changed = run(conn)
    typer.echo(f"{changed} resources changed category.")


@app.command()
def bench(
    suite: str = typer.Argument("all", help="ingest, ingest_breakdown, load or all"),
) -> None:
    """Run the benchmarks in benchmarks/ (see docs/benchmarks.md)."""
    import runpy
    import sys

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    names = ["ingest", "load"] if suite == "all" else [suite]
    for name in names:
        script = root / f"bench_{name}.py"
        sys.argv = [str(script)]  # each benchmark parses its own options; run them with defaults
        runpy.run_path(str(script), run_name="__main__")


@app.command()
def lifecycle() -> None:
    """Apply the record life-cycle rules once: close at death and after inactivity, delete after
    the retention period (``sharedcare worker`` runs it daily; docs/operations.md)."""
    typer.echo(_lifecycle_job(_engine(), get_settings()))


def _lifecycle_job(engine: Engine, settings: Settings, *, full: bool = False) -> str:
    """One run of the record life cycle (``access.lifecycle.run``), as lines to print."""
    from sharedcare.access.lifecycle import run
    from sharedcare.access.policy import category_of
    from sharedcare.fhir.service import FhirService
    from sharedcare.fhir.store import utcnow
    from sharedcare.storage.engine import writer

    with writer(engine).begin() as conn:
        report = run(conn, FhirService(engine, classify=category_of), settings, utcnow())
    lines = [
        f"closed at death: {len(report.closed_at_death)}, closed after inactivity: "
        f"{len(report.closed_inactive)}, deleted after retention: {len(report.deleted)} "
        f"(with {report.traces_deleted} audit records, art. 8)"
    ]
    if report.licence_withdrawn:
        lines.append(f"licence withdrawals announced to holders: {', '.join(report.licence_withdrawn)}")
    if report.facility_withdrawn:
        lines.append(
            "facility authorisation withdrawals announced to holders: " + ", ".join(report.facility_withdrawn)
        )
    return "\n".join(lines)


def _reminder_job(engine: Engine, settings: Settings, *, full: bool = False) -> str:
    """One run of the vaccination reminders for today (``full``: recompute every forecast)."""
    from sharedcare.vaccination import reminders

    report = reminders.run(engine, settings, reminders.local_today(settings), full=full)
    return (
        f"reminders: {report.reminders} in {report.queued} messages queued; patients: "
        f"{report.patients}, recomputed: {report.recomputed}, unchanged: {report.unchanged}"
    )


def _upload_expiry_job(engine: Engine, settings: Settings, *, full: bool = False) -> str:
    """Raw uploads no document claimed in time, deleted with their content (``expire-uploads``)."""
    from sharedcare.documents.submission import expire_unclaimed
    from sharedcare.fhir.store import utcnow

    expired = expire_unclaimed(engine, settings, utcnow())
    return f"{expired} unclaimed uploads expired (older than {settings.unclaimed_upload_hours} hours)."


def _filing_notice_job(engine: Engine, settings: Settings, *, full: bool = False) -> str:
    """Overdue filing requests announced once to the holder and the professional asked."""
    from sharedcare.access import filing_notices
    from sharedcare.fhir.store import utcnow

    report = filing_notices.run(engine, settings, utcnow())
    return (
        f"overdue filing requests: {report.holders} holders told, {report.professionals} professionals "
        f"e-mailed, {report.portal_only} portal only, {report.retried} to retry"
    )


class DailyJob(Protocol):
    """A job of ``sharedcare worker``, run once a day at SHAREDCARE_REMINDER_TIME (and by
    ``--once``); it returns what to print."""

    def __call__(self, engine: Engine, settings: Settings, *, full: bool = False) -> str: ...


DAILY_JOBS: tuple[tuple[str, DailyJob], ...] = (
    ("vaccination reminders", _reminder_job),
    ("record life cycle", _lifecycle_job),
    ("unclaimed uploads", _upload_expiry_job),
    ("overdue filing requests", _filing_notice_job),
)
"""The worker's daily jobs, in order; another one is one more line here."""


def _run_daily_jobs(engine: Engine, settings: Settings, *, full: bool = False) -> bool:
    """Each daily job once; a failed job is logged and the next ones still run. False when one
    failed (what each committed stays done: the jobs are idempotent)."""
    ok = True
    for name, job in DAILY_JOBS:
        try:
            typer.echo(job(engine, settings, full=full))
        except Exception:
            _log.exception("daily job %s failed", name)
            typer.echo(f"{name}: failed (see the log); retried at the next run", err=True)
            ok = False
    return ok


@app.command("expire-uploads")
def expire_uploads() -> None:
    """Delete the raw Binary uploads no document claimed within SHAREDCARE_UNCLAIMED_UPLOAD_HOURS,
    with their content, audited (schedule it hourly; docs/documents.md)."""
    typer.echo(_upload_expiry_job(_engine(), get_settings()))


audit_app = typer.Typer(help="The audit trail (docs/audit.md).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every audit hash chain; exit 1 naming the first tampered or missing record."""
    from sharedcare.audit.log import verify

    result = verify(_engine())
    if not result.ok:
        for problem in result.problems:
            typer.echo(f"TAMPERED {problem}", err=True)
        broken = len(result.problems)
        typer.echo(f"{result.records} records in {result.chains} chains: {broken} broken", err=True)
        raise typer.Exit(1)
    deleted = f" ({result.tombstones} deleted under art. 8, as tombstones)" if result.tombstones else ""
    typer.echo(f"{result.records} records in {result.chains} chains verified{deleted}")


notify_app = typer.Typer(help="The holders' notifications (docs/notifications.md).", no_args_is_help=True)
app.add_typer(notify_app, name="notify")


@notify_app.command("deliver")
def notify_deliver(
    loop: bool = typer.Option(False, "--loop", help="Keep delivering, one pass every --interval seconds"),
    interval: float = typer.Option(60.0, help="Seconds between two passes with --loop"),
) -> None:
    """E-mail the pending notifications (one pass, or --loop); off while SHAREDCARE_SMTP_HOST is unset."""
    from sharedcare.notify import delivery

    settings = get_settings()
    if not delivery.enabled(settings):
        typer.echo("E-mail delivery is off (SHAREDCARE_SMTP_HOST is unset): messages stay in the portal.")
        return
    try:
        delivery.Mailer(settings)
    except delivery.DeliveryNotConfigured as exc:
        typer.echo(f"E-mail delivery is misconfigured: {exc}", err=True)
        raise typer.Exit(2) from None
    engine = _engine()

    def show(report: delivery.DeliveryReport) -> None:
        if report.sent or report.portal_only or report.retried or report.failed:
            typer.echo(
                f"sent: {report.sent}, portal only: {report.portal_only}, to retry: {report.retried}, "
                f"given up: {report.failed}"
            )

    if loop:
        delivery.run_loop(engine, settings, interval, on_pass=show)
        return
    report = delivery.deliver_pending(engine, settings)
    show(report)
    with engine.connect() as conn:
        counts = delivery.status(conn)
    states = ", ".join(f"{state}: {count}" for state, count in sorted(counts.items()))
    typer.echo(f"notifications by delivery state: {states or 'none'}")


@app.command()
def worker(
    once: bool = typer.Option(
        False, "--once", help="One run of the daily jobs and one delivery pass, then exit"
    ),
    interval: float = typer.Option(60.0, help="Seconds between two e-mail delivery passes"),
    full: bool = typer.Option(False, "--full", help="Recompute every patient's forecast (with --once)"),
) -> None:
    """Background work: the daily jobs (``DAILY_JOBS``: vaccination reminders, record life cycle,
    unclaimed uploads, overdue filing requests)
    at SHAREDCARE_REMINDER_TIME and the e-mail delivery of notifications
    (docs/vaccination-reminders.md); --once for tests and cron."""
    import threading

    from sharedcare.fhir.store import utcnow
    from sharedcare.notify import delivery
    from sharedcare.vaccination import reminders

    settings = get_settings()
    try:
        reminders.daily_time(settings)
        if delivery.enabled(settings):
            delivery.Mailer(settings)
    except (ValueError, delivery.DeliveryNotConfigured) as exc:
        typer.echo(f"The worker is misconfigured: {exc}", err=True)
        raise typer.Exit(2) from None
    if not delivery.enabled(settings):
        typer.echo("E-mail delivery is off (SHAREDCARE_SMTP_HOST is unset): messages stay in the portal.")
    engine = _engine()
    if once:
        jobs_ok = _run_daily_jobs(engine, settings, full=full)
        sent = delivery.deliver_pending(engine, settings)
        if sent.enabled:
            typer.echo(
                f"sent: {sent.sent}, portal only: {sent.portal_only}, to retry: {sent.retried}, "
                f"given up: {sent.failed}"
            )
        if not jobs_ok:
            raise typer.Exit(1)
        return
    stop = threading.Event()
    mailer = threading.Thread(
        target=delivery.run_loop, args=(engine, settings, interval), kwargs={"stop": stop}, daemon=True
    )
    if delivery.enabled(settings):
        mailer.start()
    try:
        while not stop.is_set():  # now (a restarted worker catches up), then daily at its time
            _run_daily_jobs(engine, settings)
            moment = utcnow()
            stop.wait(max((reminders.next_run(settings, moment) - moment).total_seconds(), 0.0))
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        stop.set()
        if mailer.is_alive():
            mailer.join(timeout=interval + 30)


accounts_app = typer.Typer(help="People's accounts (docs/identity.md).", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")


@accounts_app.command("revoke-sessions")
def accounts_revoke_sessions(
    account: str = typer.Argument(..., help="Account id, matricule or login name"),
) -> None:
    """End every portal session of an account (stolen device or cookie) and the app grants given
    in them: the agency's act, audited."""
    from sharedcare.access.principals import Principal, PrincipalKind
    from sharedcare.audit import log as audit
    from sharedcare.identity import accounts, sessions
    from sharedcare.identity.errors import AccountNotFound
    from sharedcare.storage.engine import writer

    agency = Principal(PrincipalKind.ADMIN, "sharedcare-cli", display="Agency (command line)")
    with writer(_engine()).begin() as conn:
        try:
            found: accounts.Account | None = accounts.get_account(conn, account)
        except AccountNotFound:
            found = accounts.find_by_login(conn, account)
        if found is None:
            typer.echo("No such account.", err=True)
            raise typer.Exit(1)
        ended = sessions.end_all(conn, found.id, sessions.EndReason.AGENCY)
        record = audit.record_for(
            agency,
            audit.AuditAction.LOGOUT,
            interaction="revoke-sessions",
            outcome_desc=f"account {found.id}: {ended} sessions ended",
        )
        audit.append(conn, record)
    typer.echo(f"{ended} sessions of account {found.id} ended.")


keys_app = typer.Typer(help="The master keys of content encryption (docs/storage.md).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-wrap every record's data key under the newest master key (the first of
    SHAREDCARE_MASTER_KEYS); the content is untouched. Exit 1 if some keys could not be."""
    from sharedcare.access.principals import Principal, PrincipalKind
    from sharedcare.audit import log as audit
    from sharedcare.storage.crypto import KeyRing, master_keys
    from sharedcare.storage.engine import writer

    engine = _engine()
    report = KeyRing(engine, master_keys(get_settings())).rotate()
    left = sum(report.unreadable.values())
    agency = Principal(PrincipalKind.ADMIN, "sharedcare-cli", display="Agency (command line)")
    summary = f"{report.rewrapped} data keys re-wrapped under master key {report.master_key_id}"
    with writer(engine).begin() as conn:
        outcome = audit.AuditOutcome.SUCCESS if not left else audit.AuditOutcome.MINOR_FAILURE
        record = audit.record_for(
            agency,
            audit.AuditAction.OPERATION,
            interaction="keys-rotate",
            outcome=outcome,
            outcome_desc=summary,
        )
        audit.append(conn, record)
    typer.echo(f"{summary}; {report.current} under it in all.")
    if left:
        for master_id, count in sorted(report.unreadable.items()):
            typer.echo(
                f"{count} data keys wrapped by {master_id!r} left: that master key is missing", err=True
            )
        raise typer.Exit(1)


@keys_app.command("status")
def keys_status() -> None:
    """How many data keys each master key wraps: an old master key may go once it wraps none."""
    from sharedcare.storage.crypto import KeyRing, master_keys

    ring = KeyRing(_engine(), master_keys(get_settings()))
    counts = ring.counts()
    for master_id in [*ring.masters, *sorted(set(counts) - set(ring.masters))]:
        state = (
            "newest"
            if master_id == ring.newest.id
            else "configured"
            if master_id in ring.masters
            else "MISSING"
        )
        typer.echo(f"{master_id}\t{state}\t{counts.get(master_id, 0)} data keys")


@keys_app.command("generate")
def keys_generate(key_id: str = typer.Argument(..., help="Id of the new master key, e.g. 2027-01")) -> None:
    """Print a new random master key as `id:base64key`, to put first in SHAREDCARE_MASTER_KEYS."""
    from sharedcare.storage.crypto import MasterKeyError, new_master_key, parse_master_keys

    value = new_master_key(key_id)
    try:
        parse_master_keys(value)
    except MasterKeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(value)


if __name__ == "__main__":
    app()
