"""What a site's reply carries, beyond Flower's ArrayRecord and MetricRecord.

Every reply names the site (the name a site gives itself, used as the key in the
coordinator's outputs) and a status, so the coordinator can tell a trained update from a
site that declined, failed or ran out of privacy budget. Reasons are short fixed codes
chosen by fedmed, never exception text, which could quote a site's data.
"""

from __future__ import annotations

from enum import Enum

FEDERATION_KEY = "federation"   # ConfigRecord field with FederationConfig as JSON
FREEZE_KEY = "freeze"           # train ConfigRecord field: which weights sites train (common/freezing.py)
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
SITE_KEY = "site"               # ConfigRecord: {"name": ..., "status": ..., "reason": ...}
WEIGHT_KEY = "num-examples"     # Flower's weighting key for FedAvg
RELEASE_NOISE_KEY = "release_noise"  # evaluate metric: σ per bin of the site's noised histograms


class SiteStatus(str, Enum):
    OK = "ok"
    FAILED = "failed"
    BUDGET_EXHAUSTED = "budget-exhausted"
    DECLINED = "declined"
