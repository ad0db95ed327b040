"""Budget periods, prices in nano-dollars and the budget ledger's decisions, without a node."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from atomr.core.budgets import HOLD_GRACE_S, BudgetLedger, Hold
from atomr.core.deployment import Cost
from atomr.core.errors import InvalidRequestError
from atomr.core.keys import ApiKey, parse_key_request, period_bounds, usd_to_nanos
from atomr.core.spend import SpendRecord


def ts(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


def test_calendar_periods_are_utc_days_weeks_and_months() -> None:
    now = ts(2026, 2, 18, 15, 30)  # a Wednesday
    assert period_bounds("day", now, 0) == (ts(2026, 2, 18), ts(2026, 2, 19))
    assert period_bounds("week", now, 0) == (ts(2026, 2, 16), ts(2026, 2, 23))
    assert period_bounds("month", now, 0) == (ts(2026, 2, 1), ts(2026, 3, 1))
    assert period_bounds("month", ts(2026, 12, 31, 23), 0) == (ts(2026, 12, 1), ts(2027, 1, 1))
    assert period_bounds("total", now, 100.0) == (100.0, None)


def test_fixed_length_periods_count_from_the_keys_creation() -> None:
    assert period_bounds("30s", 1000.0 + 75, 1000.0) == (1060.0, 1090.0)
    assert period_bounds("2h", 1000.0 + 7199, 1000.0) == (1000.0, 1000.0 + 7200)
    assert period_bounds("7d", 1000.0, 1000.0) == (1000.0, 1000.0 + 7 * 86400)


def test_prices_are_counted_exactly_in_nano_dollars() -> None:
    cost = Cost(prompt=2.5, completion=10.0, cached_prompt=1.25)
    assert cost.nanos(1000, 100) == 2_500_000 + 1_000_000
    assert cost.nanos(1000, 100, cached_tokens=400) == 600 * 2500 + 400 * 1250 + 1_000_000
    assert Cost(prompt=2.5).nanos(10, 0, cached_tokens=99) == 10 * 1250 * 2  # cached: at most the prompt
    # a thousand requests of 0.009 USD add up to 9 USD exactly
    assert sum(Cost(prompt=1000, completion=1000).nanos(1, 8) for _ in range(1000)) == usd_to_nanos(9.0)


def test_a_key_request_names_the_field_it_refuses() -> None:
    for body, field in (
        ({"tenant": ""}, "tenant"),
        ({"tenant": "t", "rpm": 0}, "rpm"),
        ({"tenant": "t", "period": "1y"}, "period"),
        ({"tenant": "t", "models": []}, "models"),
        ({"tenant": "t", "budget_usd": float("inf")}, "budget_usd"),
        ({"tenant": "t", "secret": "x"}, "secret"),
        ("not an object", "body"),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            parse_key_request(body)
        assert refused.value.field == field, (body, refused.value)


def key(**fields: object) -> ApiKey:
    base: dict[str, object] = {"id": "key_1", "tenant": "t", "key_sha256": "0" * 64, "created_at": 0.0}
    return ApiKey(**{**base, **fields})  # type: ignore[arg-type]


def record(rid: str, nanos: int, deployment: str = "d") -> SpendRecord:
    return SpendRecord(rid, 0.0, "key_1", "t", deployment, 1, 8, 0, nanos, 0.1, "ok")


def test_the_ledger_admits_while_less_than_the_budget_is_spent_or_held() -> None:
    ledger, k, now = BudgetLedger(), key(budget_nanos=50, period="total"), 10.0
    assert [ledger.reserve(Hold(f"r{i}", "d", "key_1", 10, 99.0), k, now) for i in range(5)] == [None] * 5
    refused = ledger.reserve(Hold("r5", "d", "key_1", 10, 99.0), k, now)
    assert refused is not None and refused.kind == "budget_exceeded" and refused.retry_after is None
    for i in range(5):  # each cost 9 of its 10 held
        ledger.settle(record(f"r{i}", 9), k, now)
    assert ledger.accounts["key_1"].spent == 45 and ledger.accounts["key_1"].held == 0
    assert ledger.reserve(Hold("r6", "d", "key_1", 10, 99.0), k, now) is None
    ledger.settle(record("r6", 9), k, now)
    assert ledger.reserve(Hold("r7", "d", "key_1", 10, 99.0), k, now) is not None  # 54 spent


def test_a_new_period_starts_from_nothing_spent_and_holds_end_at_their_deadline() -> None:
    ledger, k = BudgetLedger(), key(budget_nanos=10, period="60s", max_parallel=1)
    assert ledger.reserve(Hold("a", "d", "key_1", 10, 30.0), k, 5.0) is None
    busy = ledger.reserve(Hold("b", "d", "key_1", 1, 30.0), k, 5.0)
    assert busy is not None and busy.kind == "rate_limited" and "max_parallel" in busy.message
    ledger.settle(record("a", 10), k, 6.0)
    spent = ledger.reserve(Hold("b", "d", "key_1", 1, 30.0), k, 7.0)
    assert spent is not None and spent.kind == "budget_exceeded" and spent.retry_after == pytest.approx(53.0)
    assert ledger.reserve(Hold("c", "d", "key_1", 10, 100.0), k, 61.0) is None  # the next period
    assert ledger.expire(100.0 + HOLD_GRACE_S - 1) == 0
    assert ledger.expire(100.0 + HOLD_GRACE_S + 1) == 1
    assert ledger.accounts["key_1"].inflight == 0 and ledger.accounts["key_1"].held == 0
