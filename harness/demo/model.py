"""The demo fraud-scoring models and the flaws planted in the candidate: pure functions, no HTTP.

Three variants, all real numpy models on a 16-feature transaction vector, weights drawn from
fixed seeds so every process computes the same scores:

* ``baseline``: logistic regression, "fraud-lr-1.4.2".
* ``candidate``: MLP 16->64->32->1, "fraud-mlp-2.0.0", with four planted flaws, each confined
  to one segment so the harness has something to find (see :class:`PlantedFlaws`).
* ``candidate-clean``: MLP 16->16->1, "fraud-mlp-2.0.1-clean", none of the flaws.

The MLPs carry the baseline's linear score through a ``relu(z) - relu(-z)`` pair of units and
add a small calibrated non-linear part, so they mostly agree with the baseline, like a real
retrained model would.

Service time is *modelled* (:func:`modelled_service_ms`), not left to the CPU: the demo runs on
small noisy machines next to the load generator, and a sleep-dominated service time keeps the
measured latencies reproducible. Random-looking decisions (which answer breaks) come from a hash
of the request body, so a replay of the same capture hits the same requests every time.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "VARIANTS", "N_FEATURES", "MAX_TRANSACTIONS", "LARGE_REQUEST_TRANSACTIONS", "JITTER_SIGMA",
    "PlantedFlaws", "InvalidRequest", "Model", "ScoreOutcome", "load_model",
    "parse_score_request", "body_fraction", "schema_flaw", "feature_store_timeout",
    "transient_unavailable", "modelled_service_ms", "jittered_ms", "answer_score_request",
]

VARIANTS = ("baseline", "candidate", "candidate-clean")
N_FEATURES = 16
MAX_TRANSACTIONS = 128
LARGE_REQUEST_TRANSACTIONS = 32   # "large request" for the enterprise slowdown
BASE_SERVICE_MS = 4.0
PER_TRANSACTION_MS = 0.15
ENTERPRISE_SLOWDOWN = 2.0         # flaw a: the enrichment path only enterprise tenants have. The server, the
                                  # network and a busy machine add latency to both versions, which dilutes the ratio:
                                  # x2 stays a clear FAIL with a CPU hog on one of two cores (docs/benchmarks.md)
JITTER_SIGMA = 0.25               # lognormal jitter around the modelled median
SCHEMA_FLAW_RATE = 0.03           # flaw b, ap-south only; half each kind
FEATURE_STORE_TIMEOUT_RATE = 0.04  # flaw d, account route only
TRANSIENT_503_RATE = 0.001        # every variant: the rare infrastructure blip of production
EMBEDDING_ROWS, EMBEDDING_DIM = 150_000, 256  # flaw c: 153.6 MB of float32

SchemaFlaw = Literal["missing_model_version", "confidence_as_string"]
Route = Literal["score", "account_score"]


@dataclass(frozen=True)
class PlantedFlaws:
    slow_enterprise_batches: bool = False  # a. x2 service time, enterprise tier, >= 32 transactions
    ap_south_schema_errors: bool = False   # b. ~3% of ap-south answers break the output schema
    large_embedding_table: bool = False    # c. ~150 MB more resident memory
    feature_store_timeouts: bool = False   # d. ~4% 503 on POST /v1/accounts/{id}/score


ALL_FLAWS = PlantedFlaws(True, True, True, True)
NO_FLAWS = PlantedFlaws()


class InvalidRequest(ValueError):
    """The request body does not have the score request's shape; the message says why (-> 400)."""


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # tanh form: no overflow warning for large |z|


def _relu(z: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.maximum(z, 0.0)


@dataclass(frozen=True)
class Batch:
    features: NDArray[np.float64]        # (n, 16)
    merchant_category: NDArray[np.int64]  # (n,)
    hour: NDArray[np.int64]               # (n,)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_score_request(doc: object) -> Batch:
    """The transactions of ``{"transactions": [...]}``, validated; raises InvalidRequest."""
    if not isinstance(doc, dict) or "transactions" not in doc:
        raise InvalidRequest('body must be an object with a "transactions" array')
    txs = doc["transactions"]
    if not isinstance(txs, list) or not 1 <= len(txs) <= MAX_TRANSACTIONS:
        raise InvalidRequest(f'"transactions" must be an array of 1 to {MAX_TRANSACTIONS} objects')
    rows: list[list[float]] = []
    mcc: list[int] = []
    hours: list[int] = []
    for i, tx in enumerate(txs):
        if not isinstance(tx, dict):
            raise InvalidRequest(f"transactions[{i}] must be an object")
        amount, category, hour, features = (tx.get(k) for k in ("amount", "merchant_category", "hour", "features"))
        if not _is_number(amount) or amount < 0:
            raise InvalidRequest(f"transactions[{i}].amount must be a non-negative number")
        if not isinstance(category, int) or isinstance(category, bool) or category < 0:
            raise InvalidRequest(f"transactions[{i}].merchant_category must be a non-negative integer")
        if not isinstance(hour, int) or isinstance(hour, bool) or not 0 <= hour <= 23:
            raise InvalidRequest(f"transactions[{i}].hour must be an integer from 0 to 23")
        if not isinstance(features, list) or len(features) != N_FEATURES or not all(map(_is_number, features)):
            raise InvalidRequest(f"transactions[{i}].features must be an array of {N_FEATURES} numbers")
        rows.append([float(v) for v in features])
        mcc.append(category)
        hours.append(hour)
    return Batch(np.asarray(rows, dtype=np.float64), np.asarray(mcc, dtype=np.int64), np.asarray(hours, dtype=np.int64))


class Model:
    """One variant's model: ``score(transactions)`` -> the answer of the score routes."""

    def __init__(self, variant: str, model_version: str, flaws: PlantedFlaws,
                 layers: list[tuple[NDArray[np.float64], NDArray[np.float64]]],
                 embedding: NDArray[np.float32] | None = None) -> None:
        self.variant = variant
        self.model_version = model_version
        self.flaws = flaws
        self._layers = layers          # (W, b) per layer; relu between, sigmoid at the end
        self._embedding = embedding

    def risk(self, batch: Batch) -> NDArray[np.float64]:
        h = batch.features
        for i, (w, b) in enumerate(self._layers):
            h = h @ w.T + b
            if i < len(self._layers) - 1:
                h = _relu(h)
        logit = h[:, 0]
        if self._embedding is not None:  # the candidate's merchant embedding nudges the score
            rows = self._embedding[batch.merchant_category % EMBEDDING_ROWS, batch.hour]
            logit = logit + 0.2 * (rows.astype(np.float64) - 0.5)
        return _sigmoid(logit)

    def score(self, transactions: object) -> dict[str, Any]:
        """The answer for a list of transactions (raises InvalidRequest on a bad shape)."""
        batch = transactions if isinstance(transactions, Batch) else parse_score_request({"transactions": transactions})
        scores = self.risk(batch)
        confidence = float(scores.max())
        return {"prediction": "fraud" if confidence >= 0.5 else "legit",
                "confidence": round(confidence, 6),
                "scores": [round(float(s), 6) for s in scores],
                "model_version": self.model_version}


def _baseline_lr(rng: np.random.Generator) -> tuple[NDArray[np.float64], float]:
    # bias -5 against a logit spread of ~2.2: ~1% of single transactions score above 0.5
    return rng.normal(0.0, 0.55, N_FEATURES), -5.0


def _mlp_around(w_lin: NDArray[np.float64], b_lin: float, hidden: list[int], extra_sd: float,
                rng: np.random.Generator) -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """An MLP whose first two units of each hidden layer carry ``relu(+-(w_lin.x))``, so that
    its logit is the linear logit plus a non-linear part calibrated to mean 0, sd ``extra_sd``."""
    layers: list[tuple[NDArray[np.float64], NDArray[np.float64]]] = []
    fan_in = N_FEATURES
    for k, width in enumerate(hidden):
        w = rng.normal(0.0, 1.0 / math.sqrt(fan_in), (width, fan_in))
        b = rng.normal(0.0, 0.1, width)
        w[:2, :] = 0.0
        b[:2] = 0.0
        if k == 0:
            w[0], w[1] = w_lin, -w_lin
        else:
            w[0, 0], w[0, 1], w[1, 0], w[1, 1] = 1.0, -1.0, -1.0, 1.0
            w[2:, :2] = 0.0
        layers.append((w, b))
        fan_in = width
    w_out = np.zeros((1, fan_in))
    w_out[0, 2:] = rng.normal(0.0, 1.0, fan_in - 2)
    layers.append((w_out, np.zeros(1)))
    # calibrate the non-linear part on a fixed reference sample of the feature distribution
    h = rng.normal(0.0, 1.0, (4096, N_FEATURES))
    for w, b in layers[:-1]:
        h = _relu(h @ w.T + b)
    extra = h[:, 2:] @ w_out[0, 2:]
    scale = extra_sd / max(float(extra.std()), 1e-9)
    w_out[0, 2:] *= scale
    w_out[0, :2] = (1.0, -1.0)
    layers[-1] = (w_out, np.array([b_lin - float(extra.mean()) * scale]))
    return layers


def load_model(variant: str) -> Model:
    """The model of a variant, built deterministically (same weights in every process)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    w, b = _baseline_lr(np.random.default_rng(1402))
    if variant == "baseline":
        return Model(variant, "fraud-lr-1.4.2", NO_FLAWS, [(w[None, :], np.array([b]))])
    if variant == "candidate-clean":
        rng = np.random.default_rng(2001)
        w_clean = w + rng.normal(0.0, 0.05, N_FEATURES)
        return Model(variant, "fraud-mlp-2.0.1-clean", NO_FLAWS, _mlp_around(w_clean, b, [16], 0.4, rng))
    rng = np.random.default_rng(2000)
    layers = _mlp_around(w + rng.normal(0.0, 0.05, N_FEATURES), b, [64, 32], 0.6, rng)
    # flaw c: a merchant embedding table, allocated AND written so its pages are resident
    embedding = rng.random((EMBEDDING_ROWS, EMBEDDING_DIM), dtype=np.float32)
    return Model(variant, "fraud-mlp-2.0.0", ALL_FLAWS, layers, embedding)


# ---------------------------------------------------------------------------------------------
# flaw decisions: deterministic in the request body, so replays hit the same requests


def body_fraction(body: bytes, salt: str) -> float:
    """A uniform-looking number in [0, 1) from the body; ``salt`` keeps decisions independent."""
    digest = hashlib.sha256(salt.encode() + b"\0" + body).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def schema_flaw(flaws: PlantedFlaws, geo_region: str | None, body: bytes) -> SchemaFlaw | None:
    """Flaw b: which ap-south answers break the output schema, and how."""
    if not flaws.ap_south_schema_errors or geo_region != "ap-south":
        return None
    u = body_fraction(body, "schema")
    if u < SCHEMA_FLAW_RATE / 2:
        return "missing_model_version"
    if u < SCHEMA_FLAW_RATE:
        return "confidence_as_string"
    return None


def feature_store_timeout(flaws: PlantedFlaws, route: Route, body: bytes) -> bool:
    """Flaw d: the account route's per-account feature lookup times out now and then."""
    return flaws.feature_store_timeouts and route == "account_score" and body_fraction(body, "feature-store") < FEATURE_STORE_TIMEOUT_RATE


def transient_unavailable(body: bytes) -> bool:
    """Every variant: ~0.1% of score requests meet an infrastructure blip (same requests for all)."""
    return body_fraction(body, "transient") < TRANSIENT_503_RATE


def modelled_service_ms(n_transactions: int, tenant_tier: str | None, flaws: PlantedFlaws) -> float:
    """Median service time of a score request, before jitter."""
    ms = BASE_SERVICE_MS + PER_TRANSACTION_MS * n_transactions
    if flaws.slow_enterprise_batches and tenant_tier == "enterprise" and n_transactions >= LARGE_REQUEST_TRANSACTIONS:
        ms *= ENTERPRISE_SLOWDOWN
    return ms


def jittered_ms(median_ms: float, z: float, sigma: float = JITTER_SIGMA) -> float:
    """Lognormal jitter: ``z`` is a standard normal draw; the median stays ``median_ms``."""
    return median_ms * math.exp(sigma * z)


@dataclass(frozen=True)
class ScoreOutcome:
    status: int
    payload: dict[str, Any]
    service_ms: float  # modelled median; the server adds jitter and sleeps it


def answer_score_request(model: Model, doc: object, body: bytes, route: Route,
                         tenant_tier: str | None, geo_region: str | None) -> ScoreOutcome:
    """Status and payload of a score route for a parsed body ``doc`` (raw bytes ``body``)."""
    batch = parse_score_request(doc)  # InvalidRequest -> 400, decided by the server
    service_ms = modelled_service_ms(len(batch.features), tenant_tier, model.flaws)
    if transient_unavailable(body):
        return ScoreOutcome(503, {"error": "service temporarily unavailable"}, service_ms)
    if feature_store_timeout(model.flaws, route, body):
        return ScoreOutcome(503, {"error": "upstream feature store timeout"}, service_ms)
    answer = model.score(batch)
    kind = schema_flaw(model.flaws, geo_region, body)
    if kind == "missing_model_version":
        del answer["model_version"]
    elif kind == "confidence_as_string":
        answer["confidence"] = f"{answer['confidence']:.2f}"
    return ScoreOutcome(200, answer, service_ms)
