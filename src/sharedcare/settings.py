"""One typed settings object, read from ``SHAREDCARE_*`` environment variables.

Defaults are the embedded mode: SQLite under ``./var``, no other service needed.
Every setting is documented in ``docs/settings.md``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DicomWebServer(BaseModel):
    """A hospital's DICOMweb server the imaging proxy may reach (``SHAREDCARE_DICOMWEB_ENDPOINTS``)."""

    url: str = Field(
        description="Base URL of its DICOMweb API (QIDO-RS and WADO-RS), e.g. https://pacs/dicom-web."
    )
    username: str | None = Field(
        None, description="HTTP basic authentication user, if the server asks for one."
    )
    password: SecretStr | None = Field(None, description="HTTP basic authentication password.")


class Settings(BaseSettings):
    """Platform configuration; the defaults give a working embedded instance."""

    model_config = SettingsConfigDict(env_prefix="SHAREDCARE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, description="Port the HTTP server listens on.")
    data_dir: Path = Field(Path("./var"), description="Folder for the SQLite file and local files.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; unset means SQLite at DATA_DIR/sharedcare.db. "
        "Production: postgresql+psycopg://user@host/db.",
    )
    base_url: str | None = Field(
        None, description="Public base URL of the FHIR endpoint; unset means derived from each request."
    )
    max_request_bytes: int = Field(
        50 * 1024 * 1024, description="Largest accepted request body; larger requests get 413 unread."
    )
    default_page_size: int = Field(20, description="Search page size when _count is not given.")
    max_page_size: int = Field(1000, description="Largest _count a search may ask for.")
    default_total: str = Field(
        "accurate", description="Bundle.total mode when _total is not given: none, estimate or accurate."
    )
    validate_on_write: bool = Field(
        True, description="Validate every resource written (structure, bindings)."
    )
    demo_data: bool = Field(True, description="Load demo data on first start of `sharedcare serve`.")
    log_level: str = Field("info", description="Log level of the server.")
    gc_freeze: bool = Field(
        True,
        description="At server start, put the objects built so far (definitions, routes, caches) "
        "out of the cyclic garbage collector's scans (gc.freeze): its full collections then take "
        "milliseconds instead of the 100+ ms pauses that held up requests.",
    )

    # --- identity and accounts (issue 3) ---
    secret_key: str | None = Field(
        None,
        description="Key signing portal sessions and CSRF tokens; unset means generated once into "
        "DATA_DIR/secret.key.",
    )
    activation_code_days: int = Field(90, description="Days an activation code (sent by letter) stays valid.")
    max_failed_attempts: int = Field(
        5, description="Failed logins or activation attempts before an account or code is locked."
    )
    lockout_minutes: int = Field(15, description="Minutes a lock after too many failed attempts lasts.")
    password_min_length: int = Field(12, description="Shortest accepted password.")
    session_idle_minutes: int = Field(
        30, description="A portal session ends after this many minutes without a request."
    )
    session_hours: int = Field(12, description="A portal session ends this many hours after sign-in.")
    # --- OAuth2 / OpenID Connect, SMART on FHIR (issue 3) ---
    issuer: str | None = Field(
        None,
        description="OAuth2/OIDC issuer URL of the built-in server; unset means derived from each request.",
    )
    access_token_seconds: int = Field(900, description="Lifetime of an access token.")
    refresh_token_days: int = Field(30, description="Lifetime of a refresh token.")
    external_oidc_issuer: str | None = Field(
        None, description="Trust access tokens of this external OpenID Connect issuer (production)."
    )
    external_oidc_jwks_url: str | None = Field(
        None, description="JWKS URL of the external OpenID Connect issuer."
    )
    demo_client_secret: str | None = Field(
        None,
        description="Secret of the demo system client `demo-system`; unset: generated, printed at start.",
    )
    token_max_failures: int = Field(
        10,
        description="Failed client authentications or code/refresh-token redemptions of one client "
        "before the token endpoint refuses it for TOKEN_LOCKOUT_SECONDS.",
    )
    token_max_failures_per_address: int = Field(
        30, description="The same limit per source address (clients behind one proxy share it)."
    )
    token_lockout_seconds: int = Field(
        300,
        description="How long the token endpoint refuses a locked client or address; failures "
        "further apart than this start a new count.",
    )
    # --- access decision: LAW-AND-CROSSBORDER.md §A.11 (issue 3) ---
    activation_window_days: int = Field(
        30, description="Days after the creation letter before professionals may use a non-activated record."
    )
    access_solo_days: int = Field(
        15,
        description="Access of a solo-practice professional after the patient hands over a connection code.",
    )
    access_facility_days: int = Field(45, description="Access after registration at a care facility.")
    access_facility_renewal_days: int = Field(30, description="Longest renewal of a care facility's access.")
    access_lab_result_max_days: int = Field(
        90,
        description="Safety cap of a facility's access renewed, with the patient's agreement, until a lab "
        "result arrives: it ends the filing deadline (ACCESS_EMERGENCY_EXTRA_DAYS) after the result, and "
        "never later than this many days after the renewal.",
    )
    access_emergency_hours: int = Field(
        24, description="Emergency-department stay counted from registration."
    )
    access_emergency_extra_days: int = Field(
        15, description="Access after the emergency-department stay (filing deadline)."
    )
    filing_deadline_days: int = Field(
        15,
        ge=1,
        description="Days after the end of care by which the author files lab results, discharge and "
        "imaging reports and the patient summary (art. 9(3)); a declared end of care ends the "
        "relationship then.",
    )
    connection_code_minutes: int = Field(
        60, description="Minutes a one-time connection code from the patient's portal stays valid."
    )
    reopen_window_years: int = Field(
        10, description="Years after closure during which a record can be reopened."
    )
    delete_after_closure_years: int = Field(10, description="Years after closure when a record is deleted.")
    inactivity_closure_years: int = Field(
        10, description="Years without access after which a record is closed."
    )
    emergency_override: bool = Field(
        False,
        description="Allow the EHDS emergency override of the holder's restrictions (off in Luxembourg).",
    )
    emergency_override_hours: int = Field(12, description="Duration of one emergency override.")
    filing_request_days: int = Field(
        15, ge=1, description="Days a professional has to file an item the holder asked for (art. 9(2))."
    )
    retention_extension_max_years: int = Field(
        10,
        ge=1,
        description="Most extra years the holder may agree their closed record is kept before deletion "
        "(art. 9(5)).",
    )
    # --- e-mail delivery of the holders' notifications (docs/notifications.md) ---
    smtp_host: str | None = Field(
        None, description="SMTP server for e-mail notifications; unset: messages stay in the portal only."
    )
    smtp_port: int = Field(587, description="Port of the SMTP server.")
    smtp_from: str | None = Field(
        None, description="Sender address of the e-mails (required when SMTP_HOST is set)."
    )
    smtp_username: str | None = Field(None, description="SMTP login, if the server requires one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password, if the server requires one.")
    smtp_starttls: bool = Field(
        True, description="Upgrade the SMTP connection with STARTTLS; a server without it is an error."
    )
    smtp_timeout_seconds: int = Field(20, description="Time-out of one SMTP connection or command.")
    notify_max_attempts: int = Field(
        8, description="Delivery attempts of one notification before it is marked failed."
    )
    notify_retry_seconds: int = Field(
        300, description="Wait before the first retry of a failed delivery; doubles at each retry."
    )
    # --- vaccination forecast (docs/vaccination.md) ---
    forecast_schedule: Literal["cdc", "lu"] = Field(
        "cdc",
        description="Schedule of `$immds-forecast` when the request names none: cdc (CDC's CDSi "
        "supporting data) or lu (the national schedule, once converted).",
    )
    # --- vaccination reminders: the daily job of `sharedcare worker` (docs/vaccination-reminders.md) ---
    reminder_time: str = Field(
        "06:00 Europe/Luxembourg",
        description="When `sharedcare worker` runs the daily reminder job: `HH:MM Area/City` "
        "(IANA time zone).",
    )
    reminder_lead_days: int = Field(
        14, description="Days before a dose's recommended date when its reminder is sent."
    )
    reminder_batch_size: int = Field(
        1000, description="Patients per transaction of the reminder job (a crash redoes one batch at most)."
    )
    reminder_processes: int = Field(
        0,
        ge=0,
        description="Processes running the forecasts of the reminder job (CPU-bound); 0: one per CPU "
        "this process may use; 1: in the job's own process.",
    )
    reminder_overdue_days: int = Field(
        365,
        ge=0,
        description="An overdue reminder is sent only while the dose's past-due date is less than this "
        "many days old (older gaps stay on the portal's vaccination card); 0: no limit.",
    )
    # --- content storage: documents' bytes (docs/storage.md) ---
    blob_backend: Literal["file", "s3"] = Field(
        "file", description="Where document content is stored: file (DATA_DIR/blobs) or s3 (S3_* settings)."
    )
    s3_endpoint: str | None = Field(
        None, description="URL of the S3-compatible service; unset means AWS S3 itself (S3_REGION)."
    )
    s3_bucket: str | None = Field(
        None, description="Bucket holding the content (required with BLOB_BACKEND=s3)."
    )
    s3_access_key: str | None = Field(
        None, description="S3 access key; unset: boto3's usual credential chain."
    )
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_region: str | None = Field(None, description="S3 region (signature scope), e.g. eu-west-1.")
    max_content_bytes: int = Field(
        256 * 1024 * 1024, description="Largest document content stored; larger content is refused (413)."
    )
    unclaimed_upload_hours: int = Field(
        24,
        description="Hours a raw Binary upload waits for a document to claim it; then "
        "`sharedcare expire-uploads` deletes it and its content.",
    )
    master_keys: SecretStr | None = Field(
        None,
        description="Master keys wrapping the content data keys, newest first: `id:base64key,…` (32-byte "
        "AES keys); the first wraps new keys, the others still unwrap. Unset: generated once into "
        "DATA_DIR/master.key (embedded mode only; see docs/storage.md).",
    )
    # --- imaging: the hospitals' DICOMweb servers (docs/imaging.md) ---
    dicomweb_endpoints: dict[str, DicomWebServer] = Field(
        default_factory=dict,
        description="JSON object: endpoint id → {url, username, password} of each DICOMweb server the "
        "imaging proxy may reach; an ImagingStudy's Endpoint must name one (by address or identifier).",
    )
    dicomweb_timeout_seconds: float = Field(
        10.0, description="Time-out of one request to a DICOMweb server (504 beyond it)."
    )
    dicomweb_max_bytes: int = Field(
        16 * 1024 * 1024,
        description="Largest answer taken from a DICOMweb server (series list or rendered image); "
        "a larger one is refused (502).",
    )

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sharedcare.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
