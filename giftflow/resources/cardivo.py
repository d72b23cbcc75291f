"""The Cardivo API client (contract: cardivo-api.md). Everything Cardivo-specific on the wire is here."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote
from datetime import datetime, timezone

import dagster as dg
import httpx
from pydantic import Field
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)



class CardivoError(Exception):
    """Cardivo refused a request (4xx other than 429) or kept failing past the retries."""

    def __init__(self, status: int | None, error_type: str, message: str):
        super().__init__(f"Cardivo API {status or 'connection'} {error_type}: {message}")
        self.status, self.error_type = status, error_type


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None, detail: str):
        super().__init__(f"Cardivo API {status}: {detail}")
        self.status, self.retry_after = status, retry_after


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (_Retryable, httpx.TransportError))


_backoff = wait_exponential_jitter(initial=0.2, max=10)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return min(exc.retry_after, 60.0)  # honour Retry-After, within reason
    return _backoff(state)


def rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime: giftflow only speaks UTC-aware times")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fetched:
    records: list = field(default_factory=list)
    calls: int = 0
    next_cursor: str | None = None


class CardivoResource(dg.ConfigurableResource):
    """Reads Cardivo redemptions over HTTPS with bearer auth, paging, timeouts and retries."""

    api_base: str = Field(description="Cardivo API base URL (CARDIVO_API_BASE)")
    api_key: str = Field(description="Cardivo API key (CARDIVO_API_KEY)")
    timeout_s: float = Field(default=30.0, description="per-request timeout")
    max_attempts: int = Field(default=6, description="attempts per request before giving up")
    page_size: int = Field(default=100, ge=1, le=100)

    def _get(self, client: httpx.Client, path: str, params: dict) -> dict:
        @retry(retry=retry_if_exception(_is_retryable), wait=_wait, stop=stop_after_attempt(self.max_attempts),
               reraise=True)
        def attempt() -> dict:
            response = client.get(path, params=params)
            if response.status_code == 429 or response.status_code >= 500:  # the contract: these may be retried
                header = response.headers.get("Retry-After")
                raise _Retryable(response.status_code, float(header) if header else None, response.text[:200])
            if response.status_code >= 400:
                try:
                    err = response.json()["error"]
                    raise CardivoError(response.status_code, err.get("type", "unknown"), err.get("message", ""))
                except (ValueError, KeyError, TypeError):
                    raise CardivoError(response.status_code, "unknown", response.text[:200]) from None
            try:
                return response.json()
            except ValueError:
                raise CardivoError(response.status_code, "bad_response", "body is not JSON") from None

        try:
            return attempt()
        except _Retryable as exc:
            raise CardivoError(exc.status, "retries_exhausted", str(exc)) from exc
        except httpx.TransportError as exc:
            raise CardivoError(None, "retries_exhausted", f"{type(exc).__name__}: {exc}") from exc

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_base.rstrip("/"), timeout=self.timeout_s,
                            headers={"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"})

    def list_redemptions(
        self,
        *,
        redeemed_after: datetime | None = None,
        redeemed_before: datetime | None = None,
        updated_after: datetime | None = None,
        max_pages: int | None = None,
        cursor: str | None = None,
    ) -> Fetched:
        """All redemptions matching the filters, following `next_cursor` (up to `max_pages` pages)."""
        params: dict = {"limit": self.page_size}
        for name, value in (("redeemed_after", redeemed_after), ("redeemed_before", redeemed_before),
                            ("updated_after", updated_after)):
            if value is not None:
                params[name] = rfc3339(value)
        out = Fetched(next_cursor=cursor)
        with self._client() as client:
            while True:
                page = self._get(client, "/v1/redemptions", {**params, **({"cursor": out.next_cursor} if out.next_cursor else {})})
                out.calls += 1
                if not isinstance(page, dict) or not isinstance(page.get("data"), list):
                    raise CardivoError(200, "bad_response", "list response has no `data` array")
                out.records.extend(page["data"])
                out.next_cursor = page.get("next_cursor")
                if not out.next_cursor or (max_pages is not None and out.calls >= max_pages):
                    return out

    def find_gift_card(self, code: str) -> dict:
        """The "Find Gift Card" search by gift-card code."""
        with self._client() as client:
            return self._get(client, f"/v1/gift_cards/{quote(code, safe='')}", {})
