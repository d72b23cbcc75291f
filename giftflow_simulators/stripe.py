"""A Stripe API simulator for the endpoints giftflow uses, as the official `stripe` SDK calls them: customers,
payment intents (create + confirm make a charge), charges, refunds, Radar early fraud warnings and events;
form-encoded bodies, newest-first lists, idempotent POSTs, Stripe's error shapes and rate limiting.

Admin endpoints (outside /v1, JSON bodies, not counted in the stats):
- `POST /_sim/early_fraud_warnings` `{"charge": id, "fraud_type"?: str, "created"?: unix}` -> the warning (and
  its `radar.early_fraud_warning.created` event);
- `POST /_sim/disputes` `{"charge": id}` -> the charge, now `disputed` (event `charge.dispute.created`);
- `POST /_sim/clock` `{"now": unix | null}` freezes (or, with null, releases) the time stamped as `created` on new
  objects and events, so tests can create objects on a chosen past day; `GET /_sim/clock` shows it.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import itertools
import random
import re
import secrets
import string
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CUSTOMER_PARAMS = {
    "email",
    "name",
    "phone",
    "description",
    "metadata",
    "address",
    "shipping",
    "balance",
    "preferred_locales",
    "tax_exempt",
    "expand",
    "source",
    "tax_id_data",
}
TAX_ID_PARAMS = {"type", "value", "expand"}
COUPON_PARAMS = {
    "id",
    "percent_off",
    "amount_off",
    "currency",
    "duration",
    "duration_in_months",
    "name",
    "metadata",
    "max_redemptions",
    "expand",
}
PROMOTION_CODE_PARAMS = {"promotion", "customer", "code", "active", "metadata", "expires_at", "max_redemptions", "expand"}
# Stripe's test tokens (https://docs.stripe.com/testing): brand, last 4, funding; None: the card is declined.
TEST_TOKENS = {
    "tok_visa": ("Visa", "4242", "credit"),
    "tok_visa_debit": ("Visa", "5556", "debit"),
    "tok_mastercard": ("MasterCard", "4444", "credit"),
    "tok_amex": ("American Express", "8431", "credit"),
    "tok_discover": ("Discover", "1117", "credit"),
    "tok_chargeDeclined": None,
}
# The formats the simulator checks (Stripe checks every type; these are the ones tests and the demo use).
TAX_ID_FORMATS = {
    "eu_vat": r"[A-Z]{2}[0-9A-Z]{8,12}",
    "gb_vat": r"GB[0-9]{9}([0-9]{3})?",
    "us_ein": r"[0-9]{2}-?[0-9]{7}",
    "au_abn": r"[0-9]{11}",
    "ch_vat": r"CHE-?[0-9]{3}\.?[0-9]{3}\.?[0-9]{3} ?(MWST|TVA|IVA)",
}
ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
PAGING_PARAMS = {"limit", "starting_after", "ending_before", "created", "expand"}
PAYMENT_INTENT_PARAMS = {
    "amount",
    "currency",
    "customer",
    "confirm",
    "payment_method",
    "metadata",
    "description",
    "receipt_email",
    "expand",
}
REFUND_PARAMS = {"charge", "payment_intent", "amount", "reason", "metadata", "expand"}
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
FRAUD_TYPES = (
    "card_never_received",
    "fraudulent_card_application",
    "made_with_counterfeit_card",
    "made_with_lost_card",
    "made_with_stolen_card",
    "misc",
    "unauthorized_use_of_card",
)
PREFIXES = {
    "customer": "cus_",
    "payment_intent": "pi_",
    "charge": "ch_",
    "refund": "re_",
    "radar.early_fraud_warning": "issfr_",
    "event": "evt_",
    "tax_id": "txi_",
    "card": "card_",
    "coupon": "",
    "promotion_code": "promo_",
}
API_VERSION = "2026-10-28.endive"  # the version stripe 16 pins; stamped on events
# Stripe removed `coupon` (and `promotion_code`) from customer create/update in 2025-03-31.basil: a request naming an
# earlier Stripe-Version may still send it, a newer (or no header: the account's, i.e. the pinned) one is refused.
CUSTOMER_COUPON_REMOVED_IN = "2025-03-31"
_LIST_VALUED = {"preferred_locales", "expand", "types", "tax_id_data"}
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_ID_CHARS = string.ascii_letters + string.digits
INJECTED = ("injected_429", "injected_5xx", "lost_answers", "slow_answers")  # create_app's fault counters


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.error = {
            "type": type,
            "message": message,
            **({"param": param} if param else {}),
            **({"code": code} if code else {}),
        }


def _missing(object_id: str, param: str = "id", kind: str = "customer") -> StripeError:
    return StripeError(404, f"No such {kind.split('.')[-1]}: '{object_id}'", param=param, code="resource_missing")


def _known(params: dict, allowed: set[str]) -> None:
    if unknown := sorted(params.keys() - allowed):
        raise StripeError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0], code="parameter_unknown")


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict:
    """Stripe's form encoding (`metadata[k]=v`, `created[gte]=1`, `expand[0]=x`, `expand[]=x`) as nested values."""
    out: dict = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise StripeError(400, f"Invalid parameter name: {key}", param=key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = out
        for depth, part in enumerate(parts):
            if not isinstance(node, dict):
                raise StripeError(400, f"Invalid {parts[0]}: cannot be both a value and a hash", param=parts[0])
            part = part or str(len(node))
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    for name in _LIST_VALUED & out.keys():
        if isinstance(out[name], dict):
            out[name] = [out[name][k] for k in sorted(out[name], key=lambda k: int(k) if k.isdigit() else -1)]
    return out


def _decoded_or_none(pairs: list[tuple[str, str]] | None) -> dict | None:
    try:
        return decode_params(pairs) if pairs is not None else None
    except StripeError:
        return None


def _int(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeError(400, f"Invalid integer: {value}", param=param, code="parameter_invalid_integer") from None


# Stripe's tax-id types (API reference, "Customer tax IDs" → type, 2026-10-28): the simulator's own table, so
# it can catch a giftflow that accepts a type Stripe does not.
TAX_ID_TYPES = frozenset(
    """
    ad_nrt ae_trn al_tin am_tin ao_tin ar_cuit au_abn au_acn au_arn au_wpn aw_tin az_tin ba_tin bb_tin bd_bin
    bf_ifu bg_uic bh_vat bj_ifu bo_tin br_cnpj br_cpf bs_tin bw_vat by_tin ca_bn ca_gst_hst ca_pst_bc
    ca_pst_mb ca_pst_sk ca_qst cd_nif ch_uid ch_vat ci_vat cl_tin cm_niu cn_tin co_nit cr_tin cv_nif cz_dic
    de_stn do_rcn ec_ruc eg_tin es_cif et_tin eu_oss_vat eu_vat fo_vat fr_siren fr_siret fr_spi gb_vat ge_vat
    gh_tin gi_tin gn_nif hk_br hr_oib hu_tin ic_nif id_npwp il_vat in_gst is_kt is_vat it_cf jp_cn jp_rn
    jp_trn ke_pin kg_tin kh_tin kr_brn kz_bin la_tin li_uid li_vat lk_vat ma_vat md_cf md_vat me_pib mk_vat
    mr_nif mu_vat mx_rfc my_frp my_itn my_sst mz_nuit ng_tin no_vat no_voec np_pan nz_bn nz_gst om_vat pe_ruc
    ph_tin pl_nip pt_nif py_ruc ro_tin rs_pib ru_inn ru_kpp sa_vat sg_gst sg_uen si_tin sm_coe sn_ninea sr_fin
    sv_nit th_vat tj_tin tr_tin tt_bir tt_vat tw_vat tz_vat ua_vat ug_tin us_ein uy_ruc uz_tin uz_vat ve_rif
    vn_tin za_vat zm_tin zw_tin
""".split()
)


def _tax_id_types() -> frozenset[str]:
    return TAX_ID_TYPES


def _equals(key: str) -> Callable[[dict, Any], bool]:
    return lambda obj, value: obj[key] == value


def _bool(value: Any, param: str) -> bool:
    if value not in ("true", "false"):
        raise StripeError(400, f"Invalid boolean: {value}", param=param, code="parameter_invalid_boolean")
    return value == "true"


def _text(value: Any, param: str) -> str | None:
    if not isinstance(value, str):
        raise StripeError(400, f"Invalid string: {value}", param=param, code="parameter_invalid_string")
    return value or None  # an empty string unsets the field


class _Window:
    """Sliding one-second window over admitted requests."""

    def __init__(self, per_s: float):
        self.per_s, self.times = per_s, deque()

    def admit(self) -> bool:
        now = time.monotonic()
        while self.times and self.times[0] <= now - 1.0:
            self.times.popleft()
        if len(self.times) >= self.per_s:
            return False
        self.times.append(now)
        return True


class StripeState:
    """Customers, payment intents, charges, refunds, early fraud warnings, events, idempotency results and request
    counts; safe to share between the server and tests."""

    def __init__(
        self,
        customers: Iterable[dict] = (),
        *,
        payment_intents: Iterable[dict] = (),
        charges: Iterable[dict] = (),
        early_fraud_warnings: Iterable[dict] = (),
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ):
        self.lock = threading.RLock()
        self.clock = clock
        self._frozen: int | None = None
        self._rng = random.Random(seed)
        # kind ("customer", "charge", ...) -> id -> {"obj", "seq", "deleted"}; deleted rows stay as list cursors
        self._tables: defaultdict[str, dict[str, dict]] = defaultdict(dict)
        self._seq = 0
        self._idempotent: dict[str, tuple[tuple, int, dict]] = {}  # key -> (request fingerprint, status, body)
        self._request = {"id": None, "idempotency_key": None}  # the API request now running, for its events
        self._version = API_VERSION  # the Stripe-Version of the request now running (header, else the pinned one)
        self._lose = 0
        self._faults: deque[tuple[str | None, int, dict]] = deque()  # (route family or None, status, headers)
        self.reset_stats()
        self.load(customers, payment_intents=payment_intents, charges=charges, early_fraud_warnings=early_fraud_warnings)

    @classmethod
    def from_world(cls, world, **options) -> StripeState:
        """Everything Stripe holds in a `dataset.World`: customers, payment intents, charges (with their refunds)
        and early fraud warnings."""
        return cls(
            world.customers,
            payment_intents=world.payment_intents,
            charges=world.charges,
            early_fraud_warnings=world.early_fraud_warnings,
            **options,
        )

    # -- data -------------------------------------------------------------------------------------------------
    def load(
        self,
        customers: Iterable[dict] = (),
        *,
        payment_intents: Iterable[dict] = (),
        charges: Iterable[dict] = (),
        early_fraud_warnings: Iterable[dict] = (),
    ) -> None:
        """Preload objects (e.g. from a `World`): given keys win, the rest are Stripe's defaults. Customers come
        without events; payment intents, charges, the refunds in each charge's `refunds.data` and warnings are
        replayed in `created` order, with the events Stripe would have sent at those times. A charge's
        `disputed` is set last, without an event."""
        charges = list(charges)
        with self.lock:
            for given in customers:
                obj = self._new_customer(int(given.get("created", self._now())), given.get("id"))
                obj.update(self._given(given))
                self._insert(obj)
            by_id = {c["id"]: c for c in charges}
            for given in sorted(payment_intents, key=lambda p: p["created"]):
                pi = self._new_payment_intent(int(given["created"]), given.get("id"))
                pi.update(self._given(given, "status", "latest_charge", "amount_received"))
                pi["status"] = "requires_confirmation" if pi["payment_method"] else "requires_payment_method"
                self._insert(pi)
                self._emit("payment_intent.created", pi, created=pi["created"])
                if given.get("status") == "succeeded":
                    self._succeed(pi, {"created": pi["created"], **by_id.pop(given.get("latest_charge"), {})})
                elif given.get("status") in ("canceled", "processing", "requires_action", "requires_capture"):
                    pi["status"] = given["status"]
                    if pi["status"] == "canceled":
                        self._emit("payment_intent.canceled", pi, created=pi["canceled_at"] or pi["created"])
            for given in by_id.values():  # charges without a payment intent
                charge = self._new_charge(int(given["created"]), self._given(given, "refunds"), given["id"])
                self._insert(charge)
                self._emit("charge.succeeded", charge, created=charge["created"])
            refunds = [(r, c) for c in charges for r in (c.get("refunds") or {}).get("data", [])]
            for given, charge in sorted(refunds, key=lambda rc: rc[0]["created"]):
                self._refund(
                    self._tables["charge"][charge["id"]]["obj"],
                    int(given["amount"]),
                    given.get("reason"),
                    given.get("metadata") or {},
                    created=int(given["created"]),
                    given=given,
                )
            for given in charges:
                self._tables["charge"][given["id"]]["obj"]["disputed"] = bool(given.get("disputed"))
            for given in sorted(early_fraud_warnings, key=lambda w: w["created"]):
                charge = self._find("charge", given["charge"], "charge")
                self._warn(charge, given.get("fraud_type", "made_with_stolen_card"), int(given["created"]), given)

    def customers(self) -> list[dict]:
        """Live customers, newest first."""
        return self.objects("customer")

    def get(self, customer_id: str) -> dict | None:
        return self.retrieve("customer", customer_id)

    def objects(self, kind: str) -> list[dict]:
        """Live objects of one kind ("customer", "payment_intent", "charge", "refund", "radar.early_fraud_warning",
        "event"), newest first."""
        with self.lock:
            return [copy.deepcopy(row["obj"]) for row in self._ordered(kind) if not row["deleted"]]

    def retrieve(self, kind: str, object_id: str) -> dict | None:
        with self.lock:
            row = self._tables[kind].get(object_id)
            return copy.deepcopy(row["obj"]) if row and not row["deleted"] else None

    def now(self) -> int:
        """The simulated time stamped as `created`: the frozen time if set, else the clock."""
        with self.lock:
            return self._now()

    def set_now(self, now: int | None) -> None:
        """Freeze the time new objects and events get as `created` (None: follow the clock again)."""
        with self.lock:
            self._frozen = None if now is None else int(now)

    def create_early_fraud_warning(
        self, charge_id: str, fraud_type: str = "made_with_stolen_card", created: int | None = None
    ) -> dict:
        """What Radar does on an issuer's fraud report: a warning on the charge and its event."""
        with self.lock:
            charge = self._find("charge", charge_id, "charge")
            if fraud_type not in FRAUD_TYPES:
                raise StripeError(400, f"Invalid fraud_type: must be one of {', '.join(FRAUD_TYPES)}", param="fraud_type")
            return copy.deepcopy(self._warn(charge, fraud_type, None if created is None else _int(created, "created")))

    def dispute(self, charge_id: str) -> dict:
        """The cardholder disputes the charge: `disputed` becomes true, a `charge.dispute.created` event (the dispute
        itself is not kept) and the charge's warnings stop being actionable. Returns the charge."""
        with self.lock:
            charge = self._find("charge", charge_id, "charge")
            if not charge["disputed"]:
                charge["disputed"] = True
                self._emit(
                    "charge.dispute.created",
                    {
                        "id": "dp_" + self._rand(24),
                        "object": "dispute",
                        "amount": charge["amount"],
                        "charge": charge["id"],
                        "created": self._now(),
                        "currency": charge["currency"],
                        "livemode": False,
                        "metadata": {},
                        "payment_intent": charge["payment_intent"],
                        "reason": "fraudulent",
                        "status": "needs_response",
                    },
                )
                self._unactionable(charge["id"])
            return copy.deepcopy(charge)

    def lose_next_responses(self, n: int = 1) -> None:
        """The next `n` applied writes answer 502 as if their response was lost on the way; a retry with the same
        Idempotency-Key (as the SDK's own retry sends) then gets the real, saved response."""
        with self.lock:
            self._lose = n

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        route: str | None = None,
        retry_after: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """The next `n` requests (to `route`, a family such as "POST /v1/customers/{id}", or any) are answered
        `status` (429: a rate_limit_error, else an api_error) before they do anything, optionally with
        `Retry-After` and `Stripe-Should-Retry` headers; they are counted as `injected`."""
        headers = {
            **({"Retry-After": str(retry_after)} if retry_after is not None else {}),
            **({"Stripe-Should-Retry": "true" if should_retry else "false"} if should_retry is not None else {}),
        }
        with self.lock:
            self._faults.extend([(route, int(status), headers)] * n)

    def expire_idempotency_keys(self) -> int:
        """Forget every saved idempotent result, as Stripe does after 24 hours: a request sent again with the same
        key is then carried out anew. Returns how many were forgotten."""
        with self.lock:
            n = len(self._idempotent)
            self._idempotent.clear()
            return n

    def _injected_fault(self, family: str) -> tuple[int, dict, dict] | None:
        for i, (route, status, headers) in enumerate(self._faults):
            if route is None or route == family:
                del self._faults[i]
                error = (
                    {"type": "rate_limit_error", "code": "rate_limit", "message": "Request rate limit exceeded (simulated)."}
                    if status == 429
                    else {"type": "api_error", "message": f"Simulated error {status}."}
                )
                return status, {"error": error}, dict(headers)
        return None

    def _now(self) -> int:
        return self._frozen if self._frozen is not None else int(self.clock())

    def _rand(self, k: int, chars: str = _ID_CHARS) -> str:
        return "".join(self._rng.choices(chars, k=k))

    def _new_id(self, kind: str, given: str | None = None) -> str:
        object_id = given
        while object_id is None or object_id in self._tables[kind]:
            object_id = PREFIXES[kind] + self._rand(14 if kind == "customer" else 24)
        return object_id

    @staticmethod
    def _given(given: dict, *drop: str) -> dict:
        return copy.deepcopy({k: v for k, v in given.items() if k not in ("id", "object", *drop)})

    def _new_customer(self, created: int, customer_id: str | None = None) -> dict:
        return {
            "id": self._new_id("customer", customer_id),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": created,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": self._rand(8, "0123456789ABCDEF"),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }

    def _new_payment_intent(self, created: int, payment_intent_id: str | None = None) -> dict:
        pid = self._new_id("payment_intent", payment_intent_id)
        return {
            "id": pid,
            "object": "payment_intent",
            "amount": 0,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{pid}_secret_{self._rand(25)}",
            "confirmation_method": "automatic",
            "created": created,
            "currency": "usd",
            "customer": None,
            "customer_account": None,
            "description": None,
            "excluded_payment_method_types": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "managed_payments": None,
            "metadata": {},
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }

    def _new_charge(self, created: int, given: dict, charge_id: str | None = None) -> dict:
        cid = self._new_id("charge", charge_id)
        customer = self._tables["customer"].get(given.get("customer") or "")
        obj = {
            "id": cid,
            "object": "charge",
            "amount": 0,
            "amount_captured": 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": "txn_" + self._rand(24),
            "billing_details": {
                "address": dict.fromkeys(ADDRESS_KEYS),
                "email": customer and customer["obj"]["email"],
                "name": customer and customer["obj"]["name"],
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": "GIFTFLOW",
            "captured": True,
            "created": created,
            "currency": "usd",
            "customer": None,
            "description": None,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": {},
            "on_behalf_of": None,
            "outcome": {
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": self._rng.randrange(5, 60),
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": True,
            "payment_intent": None,
            "payment_method": None,
            "payment_method_details": {
                "card": {
                    "amount_authorized": None,
                    "authorization_code": None,
                    "brand": "visa",
                    "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
                    "country": "US",
                    "exp_month": 12,
                    "exp_year": 2030,
                    "fingerprint": self._rand(16),
                    "funding": "credit",
                    "installments": None,
                    "last4": "4242",
                    "mandate": None,
                    "network": "visa",
                    "network_transaction_id": self._rand(15, "0123456789"),
                    "regulated_status": "unregulated",
                    "three_d_secure": None,
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{self._rand(60)}",
            "refunded": False,
            "refunds": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/charges/{cid}/refunds",
            },
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded",
            "transfer_data": None,
            "transfer_group": None,
        }
        obj.update(given)
        obj["amount_captured"] = given.get("amount_captured", obj["amount"])
        obj.update(amount_refunded=0, refunded=False, disputed=False)  # refunds and disputes come after
        return obj

    def _insert(self, obj: dict) -> None:
        self._seq += 1
        self._tables[obj["object"]][obj["id"]] = {"obj": obj, "seq": self._seq, "deleted": False}
        self.__dict__.setdefault("_order_cache", {}).pop(obj["object"], None)

    def _ordered(self, kind: str) -> list[dict]:
        return self._ordered_with_positions(kind)[0]

    def _ordered_with_positions(self, kind: str) -> tuple[list[dict], dict[str, int]]:
        """Newest first, and each id's place; kept until the next insert of that kind (a `created` never
        changes), so paging through 100,000 customers does not sort them once per page."""
        cache = self.__dict__.setdefault("_order_cache", {})
        if kind not in cache:
            rows = sorted(self._tables[kind].values(), key=lambda r: (r["obj"]["created"], r["seq"]), reverse=True)
            cache[kind] = (rows, {row["obj"]["id"]: i for i, row in enumerate(rows)})
        return cache[kind]

    def _find(self, kind: str, object_id: Any, param: str = "id") -> dict:
        row = self._tables[kind].get(object_id) if isinstance(object_id, str) else None
        if row is None or row["deleted"]:
            raise _missing(str(object_id), param, kind)
        return row["obj"]

    def _emit(self, type: str, obj: dict, previous: dict | None = None, created: int | None = None) -> None:
        """Record the event Stripe sends for a change: a snapshot of the object (and what an update changed)."""
        self._insert(
            {
                "id": self._new_id("event"),
                "object": "event",
                "api_version": API_VERSION,
                "created": self._now() if created is None else created,
                "data": {
                    "object": copy.deepcopy(obj),
                    **({"previous_attributes": copy.deepcopy(previous)} if previous is not None else {}),
                },
                "livemode": False,
                "pending_webhooks": 0,
                "request": dict(self._request),
                "type": type,
            }
        )

    def _succeed(self, pi: dict, given: dict | None = None) -> None:
        """Confirm `pi`: it succeeds at once and its charge is made (`given` overrides the charge's keys)."""
        given = given or {}
        charge = self._new_charge(
            int(given.get("created", self._now())),
            {
                **{
                    k: copy.deepcopy(pi[k])
                    for k in ("amount", "currency", "customer", "payment_method", "description", "metadata", "receipt_email")
                },
                "payment_intent": pi["id"],
                **self._given(given, "refunds", "amount_refunded", "refunded", "disputed"),
            },
            given.get("id"),
        )
        self._insert(charge)
        self._emit("charge.succeeded", charge, created=charge["created"])
        pi.update(status="succeeded", latest_charge=charge["id"], amount_received=pi["amount"])
        self._emit("payment_intent.succeeded", pi, created=charge["created"])

    def _refund(
        self,
        charge: dict,
        amount: int | None,
        reason: str | None,
        metadata: dict,
        created: int | None = None,
        given: dict | None = None,
    ) -> dict:
        if amount is not None and amount <= 0:
            raise StripeError(400, "Invalid positive integer", param="amount", code="parameter_invalid_integer")
        if charge["disputed"]:
            raise StripeError(
                400,
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                param="charge",
                code="charge_disputed",
            )
        left = charge["amount"] - charge["amount_refunded"]
        if left <= 0:
            raise StripeError(
                400, f"Charge {charge['id']} has already been refunded.", param="charge", code="charge_already_refunded"
            )
        if amount is not None and amount > left:
            raise StripeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                param="amount",
                code="amount_too_large",
            )
        refund = {
            "id": self._new_id("refund", (given or {}).get("id")),
            "object": "refund",
            "amount": left if amount is None else amount,
            "balance_transaction": "txn_" + self._rand(24),
            "charge": charge["id"],
            "created": self._now() if created is None else created,
            "currency": charge["currency"],
            "customer": charge["customer"],
            "customer_account": None,
            "destination_details": {
                "card": {"reference_status": "pending", "type": "refund", "reference_type": "acquirer_reference_number"},
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "payment_method": charge["payment_method"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        refund.update(self._given(given or {}, "amount", "charge", "created", "reason", "metadata"))
        self._insert(refund)
        previous = {
            "amount_refunded": charge["amount_refunded"],
            "refunded": charge["refunded"],
            "refunds": copy.deepcopy(charge["refunds"]),
        }
        charge["amount_refunded"] += refund["amount"]
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        charge["refunds"]["data"].insert(0, copy.deepcopy(refund))
        charge["refunds"]["total_count"] += 1
        self._emit("refund.created", refund, created=refund["created"])
        self._emit(
            "charge.refunded", charge, {k: v for k, v in previous.items() if v != charge[k]}, created=refund["created"]
        )
        if charge["refunded"]:
            self._unactionable(charge["id"], refund["created"])
        return refund

    def _warn(self, charge: dict, fraud_type: str, created: int | None = None, given: dict | None = None) -> dict:
        obj = {
            "id": self._new_id("radar.early_fraud_warning", (given or {}).get("id")),
            "object": "radar.early_fraud_warning",
            "actionable": not (charge["refunded"] or charge["disputed"]),
            "charge": charge["id"],
            "created": self._now() if created is None else created,
            "fraud_type": fraud_type,
            "livemode": False,
            "payment_intent": charge["payment_intent"],
        }
        obj.update(self._given(given or {}, "charge", "created", "fraud_type"))
        self._insert(obj)
        self._emit("radar.early_fraud_warning.created", obj, created=obj["created"])
        return obj

    def _unactionable(self, charge_id: str, created: int | None = None) -> None:
        """A warning stops being actionable once its charge is fully refunded or disputed."""
        for row in self._ordered("radar.early_fraud_warning"):
            if row["obj"]["charge"] == charge_id and row["obj"]["actionable"]:
                row["obj"]["actionable"] = False
                self._emit("radar.early_fraud_warning.updated", row["obj"], {"actionable": True}, created)

    # -- endpoints (called under the lock) ----------------------------------------------------------------------
    def _apply_fields(self, obj: dict, params: dict, creating: bool = False) -> None:
        coupon_ok = self._version < CUSTOMER_COUPON_REMOVED_IN  # dated versions compare as text
        _known(
            params,
            (CUSTOMER_PARAMS if creating else CUSTOMER_PARAMS - {"tax_id_data"}) | ({"coupon"} if coupon_ok else set()),
        )
        tax_ids = [
            self._check_tax_id(t, f"tax_id_data[{i}]")
            for i, t in enumerate(self._list_param(params.get("tax_id_data", []), "tax_id_data"))
        ]
        card = self._check_token(params["source"]) if params.get("source") else None
        changes: dict = {}
        for name in ("name", "phone", "description"):
            if name in params:
                changes[name] = _text(params[name], name)
        if "email" in params:
            email = _text(params["email"], "email")
            if email is not None and (len(email) > 512 or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email)):
                raise StripeError(400, f"Invalid email address: {email}", param="email", code="email_invalid")
            changes["email"] = email
        if "balance" in params:
            changes["balance"] = _int(params["balance"], "balance")
        if "tax_exempt" in params:
            if params["tax_exempt"] not in ("none", "exempt", "reverse", ""):
                raise StripeError(400, f"Invalid tax_exempt: {params['tax_exempt']}", param="tax_exempt")
            changes["tax_exempt"] = params["tax_exempt"] or "none"
        if "preferred_locales" in params:
            value = params["preferred_locales"]
            changes["preferred_locales"] = [] if value == "" else list(value)
        for name in ("address", "shipping"):
            if name in params:
                value = params[name]
                if value == "":
                    changes[name] = None
                elif not isinstance(value, dict):
                    raise StripeError(400, f"Invalid hash: {name}", param=name)
                elif name == "address":
                    changes[name] = {k: value.get(k) or None for k in ADDRESS_KEYS}
                else:
                    address = value.get("address") if isinstance(value.get("address"), dict) else {}
                    if not value.get("name"):
                        raise StripeError(
                            400, "Missing required param: shipping[name].", param="shipping[name]", code="parameter_missing"
                        )
                    if not isinstance(value.get("address"), dict):
                        raise StripeError(
                            400,
                            "Missing required param: shipping[address].",
                            param="shipping[address]",
                            code="parameter_missing",
                        )
                    changes[name] = {
                        "address": {k: address.get(k) or None for k in ADDRESS_KEYS},
                        "name": value.get("name"),
                        "phone": value.get("phone") or None,
                    }
        if "metadata" in params:
            changes["metadata"] = self._merge_metadata(obj["metadata"], params["metadata"])
        if params.get("coupon"):  # (an empty value would remove the discount: not needed by giftflow)
            changes["discount"] = self._discount(obj["id"], self._find("coupon", params["coupon"], "coupon"))
        obj.update(changes)
        # Everything is valid: now the objects the customer owns.
        for type_, value in tax_ids:
            self._new_tax_id(obj["id"], type_, value)
        if card is not None:
            obj["default_source"] = self._new_card(obj["id"], *card)["id"]

    def _discount(self, customer_id: str, coupon: dict) -> dict:
        """The customer's discount for `coupon`: the current shape (`source.coupon`) with the older one's
        `coupon` object beside it, so a client of either version reads it."""
        return {
            "id": "di_" + self._rand(24),
            "object": "discount",
            "customer": customer_id,
            "start": self._now(),
            "end": None,
            "invoice": None,
            "invoice_item": None,
            "promotion_code": None,
            "subscription": None,
            "source": {"coupon": coupon["id"], "type": "coupon"},
            "coupon": copy.deepcopy(coupon),
        }

    @staticmethod
    def _list_param(value: Any, param: str) -> list:
        if value == "" or value is None:
            return []
        if isinstance(value, dict):  # `x[0][k]=v` without the list decoding
            value = [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else -1)]
        if not isinstance(value, list):
            raise StripeError(400, f"Invalid array: {param}", param=param)
        return value

    @staticmethod
    def _check_tax_id(given: Any, param: str) -> tuple[str, str]:
        if not isinstance(given, dict) or not given.get("type") or not given.get("value"):
            raise StripeError(
                400, f"Missing required param: {param}[type] and {param}[value].", param=param, code="parameter_missing"
            )
        type_, value = given["type"], given["value"]
        if type_ not in _tax_id_types():
            raise StripeError(
                400,
                f"Invalid {param}[type]: must be one of {', '.join(sorted(_tax_id_types())[:5])}, ...",
                param=f"{param}[type]",
            )
        pattern = TAX_ID_FORMATS.get(type_)
        if pattern and not re.fullmatch(pattern, value):
            raise StripeError(400, f"Invalid value for {type_}.", param=f"{param}[value]", code="tax_id_invalid")
        return type_, value

    @staticmethod
    def _check_token(token: Any) -> tuple[str, str, str]:
        if token not in TEST_TOKENS:
            raise StripeError(400, f"No such token: '{token}'", param="source", code="resource_missing")
        if TEST_TOKENS[token] is None:
            raise StripeError(402, "Your card was declined.", type="card_error", param="source", code="card_declined")
        return TEST_TOKENS[token]

    def _new_tax_id(self, customer_id: str, type_: str, value: str) -> dict:
        country = value[:2] if type_ in ("eu_vat", "gb_vat") else type_[:2].upper()
        obj = {
            "id": self._new_id("tax_id"),
            "object": "tax_id",
            "country": country,
            "created": self._now(),
            "customer": customer_id,
            "livemode": False,
            "owner": {"customer": customer_id, "type": "customer"},
            "type": type_,
            "value": value,
            "verification": {"status": "pending", "verified_address": None, "verified_name": None},
        }
        self._insert(obj)
        self._emit("customer.tax_id.created", obj)
        return obj

    def _new_card(self, customer_id: str, brand: str, last4: str, funding: str) -> dict:
        obj = {
            "id": self._new_id("card"),
            "object": "card",
            "address_city": None,
            "address_country": None,
            "address_line1": None,
            "address_line2": None,
            "address_state": None,
            "address_zip": None,
            "brand": brand,
            "country": "US",
            "customer": customer_id,
            "cvc_check": "pass",
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": self._rand(16),
            "funding": funding,
            "last4": last4,
            "metadata": {},
            "name": None,
            "tokenization_method": None,
            "created": self._now(),
        }
        self._insert(obj)
        return obj

    def _owned(self, kind: str, customer_id: str) -> list[dict]:
        return [
            copy.deepcopy(r["obj"]) for r in self._ordered(kind) if not r["deleted"] and r["obj"]["customer"] == customer_id
        ]

    def _render_customer(self, obj: dict, expand: Any, prefix: str = "") -> dict:
        """A customer as Stripe returns it; `tax_ids` and `sources` only where expanded."""
        out = copy.deepcopy(obj)
        expand = expand if isinstance(expand, list) else [expand] if expand else []
        for name, kind in (("tax_ids", "tax_id"), ("sources", "card")):
            if prefix + name in expand:
                data = self._owned(kind, obj["id"])
                out[name] = {
                    "object": "list",
                    "data": data,
                    "has_more": False,
                    "total_count": len(data),
                    "url": f"/v1/customers/{obj['id']}/{name}",
                }
        return out

    @staticmethod
    def _merge_metadata(current: dict, given: Any) -> dict:
        if given == "":  # `metadata=` clears every key, as at Stripe
            return {}
        if not isinstance(given, dict):
            raise StripeError(400, "Invalid hash", param="metadata")
        merged = dict(current)
        for key, value in given.items():
            if not isinstance(value, str):
                raise StripeError(400, f"Invalid value for metadata key {key}", param=f"metadata[{key}]")
            if len(key) > 40:
                raise StripeError(400, "Metadata keys can have up to 40 characters", param=f"metadata[{key}]")
            if len(value) > 500:
                raise StripeError(400, "Metadata values can have up to 500 characters", param=f"metadata[{key}]")
            if value == "":
                merged.pop(key, None)  # an empty value deletes the key, as at Stripe
            else:
                merged[key] = value
        if len(merged) > 50:
            raise StripeError(400, "Metadata can have up to 50 keys", param="metadata")
        return merged

    def create_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        obj = self._new_customer(self._now())
        staged = copy.deepcopy(obj)
        self._apply_fields(
            staged, {k: v for k, v in params.items() if k not in ("source", "tax_id_data")}, creating=True
        )  # validate first: a refused create leaves nothing behind
        self._check_token(params["source"]) if params.get("source") else None
        for i, t in enumerate(self._list_param(params.get("tax_id_data", []), "tax_id_data")):
            self._check_tax_id(t, f"tax_id_data[{i}]")
        self._insert(obj)
        self._apply_fields(obj, params, creating=True)
        self._emit("customer.created", obj)
        return 200, self._render_customer(obj, params.get("expand"))

    def retrieve_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, {"expand"})
        row = self._tables["customer"].get(path["id"])
        if row and row["deleted"]:  # Stripe answers a deleted customer with its tombstone
            return 200, {"id": path["id"], "object": "customer", "deleted": True}
        return 200, self._render_customer(self._find("customer", path["id"]), params.get("expand"))

    def update_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        obj = self._find("customer", path["id"])
        staged = copy.deepcopy(obj)
        self._apply_fields(staged, params)  # all or nothing: a bad parameter changes no field
        previous = {k: v for k, v in obj.items() if staged[k] != v}
        obj.update(staged)
        if previous:
            self._emit("customer.updated", obj, previous)
        return 200, self._render_customer(obj, params.get("expand"))

    def delete_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        obj = self._find("customer", path["id"])
        self._tables["customer"][obj["id"]]["deleted"] = True
        self._emit("customer.deleted", obj)
        return 200, {"id": obj["id"], "object": "customer", "deleted": True}

    def list_customers(self, path: dict, params: dict) -> tuple[int, dict]:
        status, body = self._list("customer", params, {"email": _equals("email")}, "/v1/customers")
        if params.get("expand"):
            body["data"] = [self._render_customer(c, params["expand"], "data.") for c in body["data"]]
        return status, body

    def create_tax_id(self, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, TAX_ID_PARAMS)
        customer = self._find("customer", path["id"])
        type_, value = self._check_tax_id({k: params.get(k) for k in ("type", "value")}, "tax_id")
        return 200, copy.deepcopy(self._new_tax_id(customer["id"], type_, value))

    def list_tax_ids(self, path: dict, params: dict) -> tuple[int, dict]:
        customer = self._find("customer", path["id"])
        return self._list_owned("tax_id", customer["id"], params, f"/v1/customers/{customer['id']}/tax_ids")

    def list_sources(self, path: dict, params: dict) -> tuple[int, dict]:
        customer = self._find("customer", path["id"])
        return self._list_owned(
            "card",
            customer["id"],
            {k: v for k, v in params.items() if k != "object"},
            f"/v1/customers/{customer['id']}/sources",
        )

    def _list_owned(self, kind: str, customer_id: str, params: dict, url: str) -> tuple[int, dict]:
        return self._list(kind, params, {}, url, only=lambda obj: obj["customer"] == customer_id)

    def create_coupon(self, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, COUPON_PARAMS)
        if ("percent_off" in params) == ("amount_off" in params):
            raise StripeError(400, "You must pass exactly one of percent_off or amount_off.", param="percent_off")
        coupon_id = params.get("id") or self._rand(8)
        if coupon_id in self._tables["coupon"]:
            raise StripeError(400, "Coupon already exists.", param="id", code="resource_already_exists")
        duration = params.get("duration", "once")
        if duration not in ("once", "repeating", "forever"):
            raise StripeError(400, f"Invalid duration: {duration}", param="duration")
        obj = {
            "id": coupon_id,
            "object": "coupon",
            "amount_off": None,
            "created": self._now(),
            "currency": None,
            "duration": duration,
            "duration_in_months": None,
            "livemode": False,
            "max_redemptions": None,
            "metadata": {},
            "name": params.get("name") or None,
            "percent_off": None,
            "redeem_by": None,
            "times_redeemed": 0,
            "valid": True,
        }
        if "percent_off" in params:
            obj["percent_off"] = float(params["percent_off"])
        else:
            obj.update(amount_off=_int(params["amount_off"], "amount_off"), currency=str(params.get("currency", "usd")))
        if "metadata" in params:
            obj["metadata"] = self._merge_metadata({}, params["metadata"])
        self._insert(obj)
        return 200, copy.deepcopy(obj)

    def retrieve_coupon(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._retrieve("coupon", path, params)

    def create_promotion_code(self, path: dict, params: dict) -> tuple[int, dict]:
        """The pinned API's way to give one customer a coupon: a promotion code restricted to that customer."""
        _known(params, PROMOTION_CODE_PARAMS)
        promotion = params.get("promotion")
        if not isinstance(promotion, dict) or promotion.get("type") != "coupon" or not promotion.get("coupon"):
            raise StripeError(400, "Missing required param: promotion[coupon].", param="promotion", code="parameter_missing")
        coupon = self._find("coupon", promotion["coupon"], "promotion[coupon]")
        customer = self._find("customer", params["customer"], "customer")["id"] if params.get("customer") else None
        code = params.get("code") or self._rand(8, string.ascii_uppercase + string.digits)
        if not re.fullmatch(r"[a-zA-Z0-9-]+", code):
            raise StripeError(400, f"Invalid code: {code}", param="code")
        if any(
            r["obj"]["code"].lower() == code.lower() and r["obj"]["active"] and not r["deleted"]
            for r in self._tables["promotion_code"].values()
        ):
            raise StripeError(400, f"An active promotion code with `code: {code}` already exists.", param="code")
        limit = _int(params["max_redemptions"], "max_redemptions") if params.get("max_redemptions") else None
        if limit is not None and limit < 1:
            raise StripeError(400, "Invalid max_redemptions: must be at least 1", param="max_redemptions")
        obj = {
            "id": self._new_id("promotion_code"),
            "object": "promotion_code",
            "active": _bool(params.get("active", "true"), "active"),
            "code": code,
            "created": self._now(),
            "customer": customer,
            "customer_account": None,
            "expires_at": None,
            "livemode": False,
            "max_redemptions": limit,
            "metadata": {},
            "promotion": {"coupon": coupon["id"], "type": "coupon"},
            "restrictions": {
                "currency_options": {},
                "first_time_transaction": False,
                "minimum_amount": None,
                "minimum_amount_currency": None,
            },
            "times_redeemed": 0,
        }
        if "metadata" in params:
            obj["metadata"] = self._merge_metadata({}, params["metadata"])
        self._insert(obj)
        self._emit("promotion_code.created", obj)
        return 200, copy.deepcopy(obj)

    def list_promotion_codes(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._list(
            "promotion_code",
            params,
            {
                "customer": _equals("customer"),
                "code": _equals("code"),
                "coupon": lambda obj, v: obj["promotion"]["coupon"] == v,
                "active": lambda obj, v: obj["active"] == _bool(v, "active"),
            },
            "/v1/promotion_codes",
        )

    def create_payment_intent(self, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, PAYMENT_INTENT_PARAMS)
        for name in ("amount", "currency"):
            if name not in params:
                raise StripeError(400, f"Missing required param: {name}.", param=name, code="parameter_missing")
        amount = _int(params["amount"], "amount")
        if not 50 <= amount <= 99999999:
            raise StripeError(
                400,
                f"Amount must be {'at least 50' if amount < 50 else 'no more than 99999999'}",
                param="amount",
                code="amount_too_small" if amount < 50 else "amount_too_large",
            )
        currency = str(params["currency"]).lower()
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise StripeError(400, f"Invalid currency: {params['currency']}", param="currency")
        obj = self._new_payment_intent(self._now())
        obj.update(amount=amount, currency=currency)
        if params.get("customer"):
            obj["customer"] = self._find("customer", params["customer"], "customer")["id"]
        for name in ("description", "receipt_email", "payment_method"):
            if name in params:
                obj[name] = _text(params[name], name)
        if "metadata" in params:
            obj["metadata"] = self._merge_metadata({}, params["metadata"])
        obj["status"] = "requires_confirmation" if obj["payment_method"] else "requires_payment_method"
        confirm = _bool(params.get("confirm", "false"), "confirm")
        if confirm and not obj["payment_method"]:
            raise StripeError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method. Specify a payment_method.",
                param="payment_method",
                code="payment_intent_unexpected_state",
            )
        self._insert(obj)
        self._emit("payment_intent.created", obj)
        if confirm:
            self._succeed(obj)
        return 200, copy.deepcopy(obj)

    def confirm_payment_intent(self, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, {"payment_method", "receipt_email", "expand"})
        obj = self._find("payment_intent", path["id"], "intent")
        if obj["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise StripeError(
                400,
                f"You cannot confirm this PaymentIntent because it has a status of {obj['status']}.",
                code="payment_intent_unexpected_state",
            )
        method = _text(params["payment_method"], "payment_method") if "payment_method" in params else None
        if not (method or obj["payment_method"]):
            raise StripeError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method. Specify a payment_method.",
                param="payment_method",
                code="payment_intent_unexpected_state",
            )
        obj["payment_method"] = method or obj["payment_method"]
        if "receipt_email" in params:
            obj["receipt_email"] = _text(params["receipt_email"], "receipt_email")
        self._succeed(obj)
        return 200, copy.deepcopy(obj)

    def create_refund(self, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, REFUND_PARAMS)
        charge = self._find("charge", params["charge"], "charge") if "charge" in params else None
        if "payment_intent" in params:
            pi = self._find("payment_intent", params["payment_intent"], "payment_intent")
            if pi["latest_charge"] is None:
                raise StripeError(
                    400,
                    f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
                    param="payment_intent",
                )
            if charge is not None and charge["id"] != pi["latest_charge"]:
                raise StripeError(
                    400, f"The charge {charge['id']} does not belong to PaymentIntent {pi['id']}.", param="charge"
                )
            charge = self._tables["charge"][pi["latest_charge"]]["obj"]
        if charge is None:
            raise StripeError(
                400,
                "One of the following params should be provided for this request: payment_intent or charge.",
                code="parameter_missing",
            )
        reason = params.get("reason") or None
        if reason is not None and reason not in REFUND_REASONS:
            raise StripeError(400, f"Invalid reason: must be one of {', '.join(REFUND_REASONS)}", param="reason")
        metadata = self._merge_metadata({}, params["metadata"]) if "metadata" in params else {}
        amount = _int(params["amount"], "amount") if "amount" in params else None
        return 200, copy.deepcopy(self._refund(charge, amount, reason, metadata))

    def _retrieve(self, kind: str, path: dict, params: dict) -> tuple[int, dict]:
        _known(params, {"expand"})
        return 200, copy.deepcopy(self._find(kind, path["id"]))

    def retrieve_payment_intent(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._retrieve("payment_intent", path, params)

    def retrieve_charge(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._retrieve("charge", path, params)

    def retrieve_refund(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._retrieve("refund", path, params)

    def retrieve_early_fraud_warning(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._retrieve("radar.early_fraud_warning", path, params)

    def retrieve_event(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._retrieve("event", path, params)

    def list_payment_intents(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._list("payment_intent", params, {"customer": _equals("customer")}, "/v1/payment_intents")

    def list_charges(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._list(
            "charge", params, {"customer": _equals("customer"), "payment_intent": _equals("payment_intent")}, "/v1/charges"
        )

    def list_refunds(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._list(
            "refund", params, {"charge": _equals("charge"), "payment_intent": _equals("payment_intent")}, "/v1/refunds"
        )

    def list_early_fraud_warnings(self, path: dict, params: dict) -> tuple[int, dict]:
        return self._list(
            "radar.early_fraud_warning",
            params,
            {"charge": _equals("charge"), "payment_intent": _equals("payment_intent")},
            "/v1/radar/early_fraud_warnings",
        )

    def list_events(self, path: dict, params: dict) -> tuple[int, dict]:
        if "type" in params and "types" in params:
            raise StripeError(400, "You may only specify one of these parameters: type, types.", param="types")
        return self._list(
            "event",
            params,
            {
                "type": lambda obj, pattern: fnmatch.fnmatchcase(obj["type"], str(pattern)),  # `charge.*` as at Stripe
                "types": lambda obj, types: obj["type"] in ([types] if isinstance(types, str) else types),
            },
            "/v1/events",
        )

    def _list(
        self,
        kind: str,
        params: dict,
        filters: dict[str, Callable[[dict, Any], bool]],
        url: str,
        only: Callable[[dict], bool] | None = None,
    ) -> tuple[int, dict]:
        """A Stripe list: newest first, `created` and `filters` (parameter -> test), cursors, `has_more`."""
        _known(params, PAGING_PARAMS | filters.keys())
        limit = _int(params.get("limit", 10), "limit")
        if not 1 <= limit <= 100:
            raise StripeError(
                400,
                f"This value must be {'greater' if limit < 1 else 'less'} than or equal to {1 if limit < 1 else 100}.",
                param="limit",
            )
        if "starting_after" in params and "ending_before" in params:
            raise StripeError(
                400, "You may only specify one of these parameters: ending_before, starting_after.", param="ending_before"
            )
        rows, position = self._ordered_with_positions(kind)
        keep = self._created_filter(params.get("created"))
        tests = [(filters[name], params[name]) for name in filters if name in params]

        def match(row: dict) -> bool:
            obj = row["obj"]
            return (
                not row["deleted"]
                and keep(obj["created"])
                and all(test(obj, v) for test, v in tests)
                and (only is None or only(obj))
            )

        for cursor in ("starting_after", "ending_before"):
            if cursor in params and params[cursor] not in position:
                raise _missing(str(params[cursor]), cursor, kind)
        if "ending_before" in params:
            before = [row for row in rows[: position[params["ending_before"]]] if match(row)]
            page, more = before[-limit:], len(before) > limit
        else:
            start = position[params["starting_after"]] + 1 if "starting_after" in params else 0
            after = list(itertools.islice((row for row in itertools.islice(rows, start, None) if match(row)), limit + 1))
            page, more = after[:limit], len(after) > limit
        return 200, {"object": "list", "data": [copy.deepcopy(r["obj"]) for r in page], "has_more": more, "url": url}

    @staticmethod
    def _created_filter(value: Any) -> Callable[[int], bool]:
        if value is None:
            return lambda created: True
        if not isinstance(value, dict):
            exact = _int(value, "created")
            return lambda created: created == exact
        ops = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
        if unknown := sorted(value.keys() - ops.keys()):
            name = f"created[{unknown[0]}]"
            raise StripeError(400, f"Received unknown parameter: {name}", param=name, code="parameter_unknown")
        bounds = [(ops[op], _int(v, f"created[{op}]")) for op, v in value.items()]
        return lambda created: all(op(created, bound) for op, bound in bounds)

    # -- one request, atomically: auth, rate limit, idempotency, the endpoint, counting ------------------------------
    def serve(
        self,
        family: str,
        action: Callable | None,
        *,
        method: str,
        path: str,
        path_params: dict,
        pairs: list[tuple[str, str]] | None,
        authorization: str | None,
        idempotency_key: str | None,
        api_key: str | None,
        window: _Window | None,
        request_id: str | None = None,
        stripe_version: str | None = None,
    ) -> tuple[int, dict, dict]:
        with self.lock:
            counts = self._by_route[family]
            counts["requests"] += 1
            self.request_log.append(
                {
                    "at": time.monotonic(),
                    "family": family,
                    "method": method,
                    "path": path,
                    "idempotency_key": idempotency_key,
                    "stripe_version": stripe_version,
                    "params": _decoded_or_none(pairs),
                }
            )
            self._version = stripe_version or API_VERSION
            try:
                if api_key is not None and authorization != f"Bearer {api_key}":
                    shown = (authorization or "").removeprefix("Bearer ")
                    raise StripeError(
                        401,
                        f"Invalid API Key provided: {shown[:8]}****{shown[-4:]}"
                        if shown
                        else "You did not provide an API key.",
                    )
                if window is not None and not window.admit():
                    counts["rate_limited"] += 1
                    limited = StripeError(
                        429,
                        "Request rate limit exceeded. Learn more about rate limits here "
                        "https://stripe.com/docs/rate-limits.",
                        type="rate_limit_error",
                        code="rate_limit",
                    )
                    return 429, {"error": limited.error}, {}
                if (fault := self._injected_fault(family)) is not None:
                    counts["injected"] += 1
                    return fault
                if action is None:
                    raise StripeError(
                        404,
                        f"Unrecognized request URL ({method}: {path}). Please see "
                        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                    )
                if pairs is None:
                    raise StripeError(400, "Request body is not form-encoded UTF-8")
                if idempotency_key and len(idempotency_key) > 255:
                    raise StripeError(400, "Idempotency keys can be up to 255 characters long")
                fingerprint = (method, path, tuple(sorted(pairs)))
                if idempotency_key and method == "POST" and idempotency_key in self._idempotent:
                    first, status, body = self._idempotent[idempotency_key]
                    if first != fingerprint:
                        raise StripeError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{idempotency_key}' if you meant to execute a different request.",
                            type="idempotency_error",
                        )
                    counts["replays"] += 1
                    return status, copy.deepcopy(body), {"Idempotent-Replayed": "true"}
                self._request = {"id": request_id, "idempotency_key": idempotency_key}  # for its events
                try:
                    status, body = action(self, path_params, decode_params(pairs))
                except StripeError as exc:
                    status, body = exc.status, {"error": exc.error}
                    counts["errors"] += 1
                else:
                    counts["writes" if method in ("POST", "DELETE") else "reads"] += 1
                # Stripe saves the result of any request that began executing; not validation failures
                if idempotency_key and method == "POST" and status != 400:
                    self._idempotent[idempotency_key] = (fingerprint, status, copy.deepcopy(body))
                if self._lose and method in ("POST", "DELETE") and status == 200:
                    self._lose -= 1
                    return 502, {"error": {"type": "api_error", "message": "response lost (simulated)"}}, {}
                return status, body, {}
            except StripeError as exc:
                counts["errors"] += 1
                return exc.status, {"error": exc.error}, {}
            finally:
                self._request = {"id": None, "idempotency_key": None}

    def stats(self) -> dict:
        """Request counts: totals and per route family (e.g. "POST /v1/customers/{id}")."""
        with self.lock:
            totals: Counter = Counter()
            for counts in self._by_route.values():
                totals.update(counts)
            return {
                **{
                    k: totals.get(k, 0)
                    for k in ("requests", "reads", "writes", "replays", "rate_limited", "errors", "injected", *INJECTED)
                },
                "by_route": {family: dict(counts) for family, counts in sorted(self._by_route.items())},
            }

    def note(self, family: str, what: str) -> None:
        """Count an injected fault (one of INJECTED) against a route family."""
        with self.lock:
            self._by_route[family][what] += 1

    def reset_stats(self) -> None:
        with self.lock:
            self._by_route: defaultdict[str, Counter] = defaultdict(Counter)
            # every request as it arrived (monotonic time, route family, decoded parameters), newest last
            self.request_log: deque[dict] = deque(maxlen=100_000)

    def requests_to(self, family: str) -> list[dict]:
        """The logged requests of one route family, e.g. "POST /v1/customers/{id}", oldest first."""
        with self.lock:
            return [copy.deepcopy(r) for r in self.request_log if r["family"] == family]


class _RequestId:
    """Adds Stripe's `Request-Id` header to every response, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = ("req_" + secrets.token_urlsafe(10)).encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()  # events name the request behind them

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(
    state: StripeState,
    *,
    api_key: str | None = None,
    rate_limit_per_s: float | None = None,
    rate_limit_rate: float = 0.0,
    error_rate: float = 0.0,
    lose_rate: float = 0.0,
    slow_rate: float = 0.0,
    slow_s: float = 0.5,
    seed: int = 0,
) -> Starlette:
    """Stripe's endpoints over `state`, and the admin endpoints of the module docstring; `api_key` None accepts
    any key.

    Injected faults on /v1 requests, drawn from a random stream seeded by `seed` so a failing run can be replayed:
    `rate_limit_rate` of them get a 429 and `error_rate` a 500/503, both before anything is applied;
    `lose_rate` of the writes that succeeded are applied and then answer 502, as if the answer was lost on the way
    (a retry with the same Idempotency-Key gets the saved answer); `slow_rate` of the answers come `slow_s`
    seconds late (after the request was applied). Counted in the stats as `injected_429`, `injected_5xx`,
    `lost_answers` and `slow_answers`."""
    window = _Window(rate_limit_per_s) if rate_limit_per_s else None
    rng, rng_lock = random.Random(seed), threading.Lock()

    def endpoint(family: str, action: Callable | None):
        async def run(request: Request) -> JSONResponse:
            with rng_lock:
                limited, failed, lost, slow = (
                    rng.random() < rate_limit_rate,
                    rng.random() < error_rate,
                    rng.random() < lose_rate,
                    rng.random() < slow_rate,
                )
                status_5xx = rng.choice([500, 503])
            if limited:
                state.note(family, "injected_429")
                error = StripeError(
                    429, "Request rate limit exceeded (simulated).", type="rate_limit_error", code="rate_limit"
                ).error
                return JSONResponse({"error": error}, 429)
            if failed:
                state.note(family, "injected_5xx")
                return JSONResponse({"error": {"type": "api_error", "message": "internal error (simulated)"}}, status_5xx)
            response = await serve(request, family, action)
            if lost and request.method in ("POST", "DELETE") and response.status_code == 200:
                state.note(family, "lost_answers")
                response = JSONResponse({"error": {"type": "api_error", "message": "response lost (simulated)"}}, 502)
            if slow:
                state.note(family, "slow_answers")
                await asyncio.sleep(slow_s)
            return response

        return run

    async def serve(request: Request, family: str, action: Callable | None) -> JSONResponse:
        try:
            body = await request.body()
        except ClientDisconnect:  # the client went away mid-request (e.g. killed): nothing applied, nobody to answer
            return JSONResponse({"error": {"type": "api_error", "message": "client disconnected"}}, 499)
        try:
            pairs = [*request.query_params.multi_items(), *parse_qsl(body.decode("utf-8"), keep_blank_values=True)]
        except UnicodeDecodeError:
            pairs = None
        status, payload, headers = state.serve(
            family,
            action,
            method=request.method,
            path=request.url.path,
            path_params=request.path_params,
            pairs=pairs,
            authorization=request.headers.get("authorization"),
            idempotency_key=request.headers.get("idempotency-key"),
            api_key=api_key,
            window=window,
            request_id=request.scope.get("state", {}).get("request_id"),
            stripe_version=request.headers.get("stripe-version"),
        )
        return JSONResponse(payload, status, headers=headers)

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(state.stats())

    async def reset_stats(request: Request) -> JSONResponse:
        state.reset_stats()
        return JSONResponse(state.stats())

    def admin(action: Callable[[dict], dict]):
        async def run(request: Request) -> JSONResponse:
            try:
                body = await request.json() if await request.body() else {}
                if not isinstance(body, dict):
                    raise StripeError(400, "Expected a JSON object")
                return JSONResponse(action(body))
            except StripeError as exc:
                return JSONResponse({"error": exc.error}, exc.status)
            except (KeyError, TypeError, ValueError) as exc:
                return JSONResponse({"error": {"type": "invalid_request_error", "message": f"Bad request: {exc!r}"}}, 400)

        return run

    def set_clock(body: dict) -> dict:
        if "now" in body:
            state.set_now(None if body["now"] is None else _int(body["now"], "now"))
        return {"now": state.now(), "frozen": state._frozen is not None}

    def route(path: str, method: str, action: Callable) -> Route:
        return Route(path, endpoint(f"{method} {path}", action), methods=[method])

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]
    return Starlette(
        routes=[
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/reset_stats", reset_stats, methods=["POST"]),
            Route("/_sim/clock", admin(set_clock), methods=["GET", "POST"]),
            Route(
                "/_sim/early_fraud_warnings",
                admin(
                    lambda body: state.create_early_fraud_warning(
                        body["charge"], body.get("fraud_type", "made_with_stolen_card"), body.get("created")
                    )
                ),
                methods=["POST"],
            ),
            Route("/_sim/disputes", admin(lambda body: state.dispute(body["charge"])), methods=["POST"]),
            Route("/v1/customers", endpoint("GET /v1/customers", StripeState.list_customers), methods=["GET"]),
            Route("/v1/customers", endpoint("POST /v1/customers", StripeState.create_customer), methods=["POST"]),
            Route("/v1/customers/{id}", endpoint("GET /v1/customers/{id}", StripeState.retrieve_customer), methods=["GET"]),
            Route("/v1/customers/{id}", endpoint("POST /v1/customers/{id}", StripeState.update_customer), methods=["POST"]),
            Route(
                "/v1/customers/{id}", endpoint("DELETE /v1/customers/{id}", StripeState.delete_customer), methods=["DELETE"]
            ),
            route("/v1/payment_intents", "GET", StripeState.list_payment_intents),
            route("/v1/payment_intents", "POST", StripeState.create_payment_intent),
            route("/v1/payment_intents/{id}", "GET", StripeState.retrieve_payment_intent),
            route("/v1/payment_intents/{id}/confirm", "POST", StripeState.confirm_payment_intent),
            route("/v1/charges", "GET", StripeState.list_charges),
            route("/v1/charges/{id}", "GET", StripeState.retrieve_charge),
            route("/v1/refunds", "GET", StripeState.list_refunds),
            route("/v1/refunds", "POST", StripeState.create_refund),
            route("/v1/refunds/{id}", "GET", StripeState.retrieve_refund),
            route("/v1/radar/early_fraud_warnings", "GET", StripeState.list_early_fraud_warnings),
            route("/v1/radar/early_fraud_warnings/{id}", "GET", StripeState.retrieve_early_fraud_warning),
            route("/v1/events", "GET", StripeState.list_events),
            route("/v1/customers/{id}/tax_ids", "GET", StripeState.list_tax_ids),
            route("/v1/customers/{id}/tax_ids", "POST", StripeState.create_tax_id),
            route("/v1/customers/{id}/sources", "GET", StripeState.list_sources),
            route("/v1/coupons", "POST", StripeState.create_coupon),
            route("/v1/coupons/{id}", "GET", StripeState.retrieve_coupon),
            route("/v1/promotion_codes", "GET", StripeState.list_promotion_codes),
            route("/v1/promotion_codes", "POST", StripeState.create_promotion_code),
            route("/v1/events/{id}", "GET", StripeState.retrieve_event),
            Route("/{path:path}", endpoint("other", None), methods=methods),
        ],
        middleware=[Middleware(_RequestId)],
    )
