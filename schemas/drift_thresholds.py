"""Drift thresholds and the one rule that turns a statistic into a status (ok / warn / alert).

The rule is the same for every statistic, and is what drift records document per statistic:
``x = effect if effect is not None else value``; **alert** when ``x >= alert_threshold`` and the test is
significant (``p_threshold`` unset, or ``p_value < p_threshold``); **warn** likewise with ``warn_threshold``.

Requiring an effect size next to the p-value is what keeps large windows quiet: with 10^5 events a KS
test is "significant" for shifts nobody cares about, but its D stays small.

>>> t = DriftThresholds()
>>> status_of(0.31, warn=t.psi_warn, alert=t.psi_alert)
'alert'
>>> status_of(0.04, warn=t.ks_warn, alert=t.ks_alert, p_value=1e-9, p_threshold=t.ks_p)  # tiny effect
'ok'
>>> status_of(0.12, warn=t.ks_warn, alert=t.ks_alert, p_value=0.2, p_threshold=t.ks_p)  # not significant
'ok'
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DriftThresholds", "status_of"]


class DriftThresholds(BaseModel):
    """Defaults measured to keep undrifted windows of 2000 events quiet (docs/drift.md, false alarms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi_warn: float = Field(0.1, gt=0, description="PSI on the reference quantile bins: moderate shift.")
    psi_alert: float = Field(0.25, gt=0, description="PSI: major shift.")
    ks_p: float = Field(0.01, gt=0, lt=1, description="KS p-value below which a shift counts as real...")
    ks_warn: float = Field(0.08, gt=0, le=1, description="...and the KS statistic D it must also reach to warn...")
    ks_alert: float = Field(0.1, gt=0, le=1, description="...or to alert (the minimum effect size).")
    chi2_p: float = Field(0.01, gt=0, lt=1, description="Chi-square p-value for categorical features...")
    chi2_warn: float = Field(0.05, gt=0, le=1, description="...and the total variation distance to warn...")
    chi2_alert: float = Field(0.1, gt=0, le=1, description="...or to alert.")
    wasserstein_warn: float = Field(0.2, gt=0, description="Wasserstein-1 in reference standard deviations.")
    wasserstein_alert: float = Field(0.35, gt=0)
    missing_warn: float = Field(0.01, ge=0, le=1, description="Missing rate above the reference's, to warn...")
    missing_alert: float = Field(0.05, ge=0, le=1, description="...or to alert.")
    min_events: int = Field(
        2000, ge=10, description="Windows with fewer events are not evaluated: the thresholds above were measured "
        "quiet on 2000-event windows; at 500 events 8 % of undrifted windows warned (docs/drift.md).",
    )


def status_of(
    x: float,
    *,
    warn: float | None,
    alert: float | None,
    p_value: float | None = None,
    p_threshold: float | None = None,
) -> str:
    """Status of an effect ``x`` (see the module docstring); a threshold of None never fires."""
    significant = p_threshold is None or (p_value is not None and p_value < p_threshold)
    if not significant:
        return "ok"
    if alert is not None and x >= alert:
        return "alert"
    if warn is not None and x >= warn:
        return "warn"
    return "ok"
