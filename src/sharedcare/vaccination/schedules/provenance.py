"""Which forecasts rest on unconfirmed schedule data: kept here for callers of the schedules
package; the code is `vaccination.cdsi.provenance`, which `cdsi.forecast` applies itself."""

from __future__ import annotations

from sharedcare.vaccination.cdsi.provenance import UNCONFIRMED, annotate, unconfirmed_paths

__all__ = ["UNCONFIRMED", "annotate", "unconfirmed_paths"]
