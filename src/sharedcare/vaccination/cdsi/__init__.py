"""CDSi immunization forecaster: CDC's Clinical Decision Support for Immunization logic, schedule as data.

Public API: `load_schedule`, `forecast` and the data classes below. See docs/vaccination-forecast.md.
"""

from ..schedules import lu as _lu  # noqa: F401  registers load_schedule("lu")
from .durations import Duration, parse_duration
from .engine import forecast
from .loader import UnknownSchedule, load_cdsi_supporting_data, load_schedule, register_schedule
from .model import (
    AdministeredDose,
    DoseEvaluation,
    Forecast,
    GroupForecast,
    Patient,
    Schedule,
    YearlySeason,
)

__all__ = [
    "AdministeredDose",
    "DoseEvaluation",
    "Duration",
    "Forecast",
    "GroupForecast",
    "Patient",
    "Schedule",
    "UnknownSchedule",
    "YearlySeason",
    "forecast",
    "load_cdsi_supporting_data",
    "load_schedule",
    "parse_duration",
    "register_schedule",
]
