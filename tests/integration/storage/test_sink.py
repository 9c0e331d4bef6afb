"""PostgresSink: a batch in one transaction, each (symbol, trade_id) stored once, nothing rounded;
a refusal says whether it is a row's fault (RowsRejected) or the server's (SinkUnavailable)."""

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from pipeline.core.errors import RowsRejected, SinkUnavailable
from pipeline.core.settings import Settings
from pipeline.core.trades import TradeEvent
from pipeline.storage.sink import PostgresSink, _PathChooser, copy_text, unique_rows
from tests.factories import keys, make_trades, rows_of
from tests.services import execute_sql

pytestmark = pytest.mark.integration


async def stored(settings: Settings) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(
            "SELECT * FROM crypto_prices ORDER BY symbol, trade_id"
        )
        return rows
    finally:
        await connection.close()


async def test_batch_is_stored_with_exact_decimals(settings: Settings) -> None:
    trades = make_trades(["BTCUSDT", "ETHUSDT"], 500)
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(rows_of(trades)) == 1000
    finally:
        await sink.close()
    rows = await stored(settings)
    assert {(r["symbol"], r["trade_id"]) for r in rows} == keys(trades)
    by_key = {(t.symbol, t.trade_id): t for t in trades}
    for row in rows:
        trade = by_key[(row["symbol"], row["trade_id"])]
        assert (row["price"], row["quantity"]) == (trade.price, trade.quantity)
        assert str(row["price"]) == str(trade.price)


async def test_duplicates_inside_and_across_batches_are_stored_once(settings: Settings) -> None:
    trades = make_trades(["SOLUSDT"], 300)
    sink = PostgresSink(settings.database)
    try:
        first = await sink.write(rows_of(trades[:200] + trades[:50]))
        replay = await sink.write(rows_of(trades))
    finally:
        await sink.close()
    assert (first, replay) == (200, 100)
    rows = await stored(settings)
    assert len(rows) == 300
    assert {(r["symbol"], r["trade_id"]) for r in rows} == keys(trades)


async def test_sink_session_keeps_synchronous_commit_on(settings: Settings) -> None:
    sink = PostgresSink(settings.database)
    try:
        await sink.write(rows_of(make_trades(["BTCUSDT"], 1)))
        pool = await sink._get_pool()
        async with pool.acquire() as connection:
            assert await connection.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await sink.close()


# --- the two write paths: COPY straight into the table, or staging + ON CONFLICT on a conflict --


def stored_count(symbol: str) -> float:
    return REGISTRY.get_sample_value("pipeline_rows_stored_total", {"symbol": symbol}) or 0.0


class PathSpy:
    """Counts the sink's fast attempts (COPY straight into the table) and staging runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fast = self.staged = 0
        fast, staged = PostgresSink._fast, PostgresSink._staged

        async def spy_fast(sink: PostgresSink, *args: Any) -> Any:
            self.fast += 1
            return await fast(sink, *args)

        async def spy_staged(sink: PostgresSink, *args: Any) -> Any:
            self.staged += 1
            return await staged(sink, *args)

        monkeypatch.setattr(PostgresSink, "_fast", spy_fast)
        monkeypatch.setattr(PostgresSink, "_staged", spy_staged)

    def reset(self) -> tuple[int, int]:
        counts, self.fast, self.staged = (self.fast, self.staged), 0, 0
        return counts


async def test_batch_with_some_rows_stored_stores_exactly_the_new_ones(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    symbols = ["ADAUSDT", "DOTUSDT"]
    trades = make_trades(symbols, 100)
    old = [t for t in trades if t.trade_id <= 60]
    new = [t for t in trades if t.trade_id > 60]
    spy = PathSpy(monkeypatch)
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(rows_of(old)) == 120
        assert spy.reset() == (1, 0)  # every row new: COPY straight into the table
        before = {s: stored_count(s) for s in symbols}
        # Stored and new rows interleaved, one new row twice.
        assert await sink.write(rows_of(trades + new[:1])) == 80
        assert spy.reset() == (1, 1)  # the COPY conflicted: rolled back, staging path
    finally:
        await sink.close()
    assert {s: stored_count(s) - before[s] for s in symbols} == {"ADAUSDT": 40, "DOTUSDT": 40}
    rows = await stored(settings)
    assert [(r["symbol"], r["trade_id"]) for r in rows] == sorted(keys(trades))


async def test_batch_entirely_stored_adds_nothing(settings: Settings) -> None:
    trades = make_trades(["LINKUSDT", "AVAXUSDT"], 50)
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(rows_of(trades)) == 100
        before = (stored_count("LINKUSDT"), stored_count("AVAXUSDT"))
        assert await sink.write(rows_of(trades)) == 0
        assert await sink.write(rows_of(list(reversed(trades)))) == 0
    finally:
        await sink.close()
    assert (stored_count("LINKUSDT"), stored_count("AVAXUSDT")) == before
    assert len(await stored(settings)) == 100


async def test_repeated_replays_after_a_conflict_store_each_row_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole topic replayed (every batch conflicts), then fresh batches again, then a
    replay and fresh rows mixed in every batch."""
    trades = make_trades(["TRXUSDT", "LTCUSDT"], 400)  # TRX 1..400, then LTC 1..400
    batches = [trades[start : start + 50] for start in range(0, len(trades), 50)]
    first, rest = batches[:8], batches[8:]
    spy = PathSpy(monkeypatch)
    sink = PostgresSink(settings.database)
    try:
        assert [await sink.write(rows_of(batch)) for batch in first] == [50] * 8
        assert spy.reset() == (8, 0)
        for _ in range(3):  # three replays of everything stored so far
            assert [await sink.write(rows_of(batch)) for batch in first] == [0] * 8
        fast_attempts, staged = spy.reset()
        assert staged == 24
        assert fast_attempts <= 2, "a replay must not cost a failed COPY per batch"
        # Replay over: back to the fast path within a batch or two.
        assert [await sink.write(rows_of(batch)) for batch in rest[:4]] == [50] * 4
        fast_attempts, staged = spy.reset()
        assert fast_attempts >= 3 and staged <= 1
        # Every batch half replayed, half new.
        mixed = [first[i] + rest[4 + i] for i in range(4)]
        assert [await sink.write(rows_of(batch)) for batch in mixed] == [50] * 4
    finally:
        await sink.close()
    rows = await stored(settings)
    assert len(rows) == 800
    assert {(r["symbol"], r["trade_id"]) for r in rows} == keys(trades)


async def test_both_paths_keep_exact_decimals(settings: Settings) -> None:
    digits = [
        ("0.00000001", "123456789.123456789012345678"),
        ("1.10000000", "0.5"),
        ("98765.43210000", "1E-8"),
        ("3", "2.000"),
    ]
    fast_batch: list[TradeEvent] = []
    staged_batch: list[TradeEvent] = []
    for symbol, batch in (("BNBUSDT", fast_batch), ("XLMUSDT", staged_batch)):
        for trade_id, (price, quantity) in enumerate(digits, start=1):
            batch.append(
                make_trades([symbol], 1, first_id=trade_id)[0].model_copy(
                    update={"price": Decimal(price), "quantity": Decimal(quantity)}
                )
            )
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(rows_of(fast_batch)) == 4  # fast path: all new
        # fast_batch again (stored) + staged_batch (new): the staging path stores these.
        assert await sink.write(rows_of(fast_batch + staged_batch)) == 4
    finally:
        await sink.close()
    rows = {(r["symbol"], r["trade_id"]): r for r in await stored(settings)}
    for trade in fast_batch + staged_batch:
        row = rows[(trade.symbol, trade.trade_id)]
        assert tuple(row.values()) == trade.as_row()
        assert (str(row["price"]), str(row["quantity"])) == (str(trade.price), str(trade.quantity))


def choose_paths(chooser: _PathChooser, conflicts: list[bool]) -> str:
    """The path of each batch, as the sink runs them: F fast, X fast conflicted then staging,
    S staging."""
    paths = ""
    for conflict in conflicts:
        if chooser.try_fast():
            if not conflict:
                chooser.fast_stored()
                paths += "F"
                continue
            chooser.fast_conflicted()
            paths += "X"
        else:
            paths += "S"
        chooser.staging_stored(conflicts=conflict)
    return paths


def test_path_choice_after_conflicts() -> None:
    """Staging while the previous batch conflicted; failed fast attempts back off."""
    chooser = _PathChooser()
    assert choose_paths(chooser, [False] * 3) == "FFF"
    # A whole topic replayed: one failed attempt, one staging batch after the replay.
    assert choose_paths(chooser, [True] * 10 + [False] * 3) == "X" + "S" * 10 + "FF"
    # Batches alternating conflicted / clean: each failed attempt doubles the wait after it.
    alternating = choose_paths(chooser, [True, False] * 100)
    assert alternating.startswith("XSXSSS")
    assert alternating.count("X") <= 8
    # A successful fast batch resets the backoff.
    chooser = _PathChooser()
    assert choose_paths(chooser, [True, False, True, False, False, False]) == "XSXSSF"
    assert choose_paths(chooser, [True, False, False]) == "XSF"


def test_unique_rows_keeps_the_first_of_each_key_in_arrival_order() -> None:
    rows = rows_of(make_trades(["BTCUSDT", "ETHUSDT"], 20))
    assert unique_rows(rows) == rows
    twin = (*rows[6][:2], Decimal("1"), Decimal("1"), 0, 0, False, 0)  # same key, other values
    assert unique_rows(rows + rows[5:9] + [twin] + list(reversed(rows[:3]))) == rows
    assert unique_rows([twin, *rows]) == [twin, *rows[:6], *rows[7:]]


def test_rows_become_copy_text_lines_in_column_order() -> None:
    row = ("BTCUSDT", 7, Decimal("65013.27000000"), Decimal("1.5E-7"), 1, 2, True, 3)
    assert copy_text([row, (*row[:6], False, 4)]) == (
        b"BTCUSDT\t7\t65013.27000000\t1.5E-7\t1\t2\tt\t3\n"
        b"BTCUSDT\t7\t65013.27000000\t1.5E-7\t1\t2\tf\t4\n"
    )


async def test_a_symbol_that_would_break_the_copy_text_is_refused_and_nothing_stored(
    settings: Settings,
) -> None:
    good = rows_of(make_trades(["BTCUSDT"], 3))
    bad = ("BTC\tUSDT", *good[0][1:])
    sink = PostgresSink(settings.database)
    try:
        with pytest.raises(RowsRejected, match="not a symbol"):
            await sink.write([*good, bad])
    finally:
        await sink.close()
    assert await stored(settings) == []


# --- refusals: a row's fault (split the batch) or the server's (retry) --------------------------


async def database_name(settings: Settings) -> str:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        name: str = await connection.fetchval("SELECT current_database()")
        return name
    finally:
        await connection.close()


@pytest.mark.parametrize("stored_first", [False, True], ids=["fast path", "staging path"])
async def test_a_value_numeric_cannot_hold_rejects_the_batch_with_the_sqlstate_and_stores_nothing(
    settings: Settings, stored_first: bool
) -> None:
    """1E-20000 is a positive decimal, but beyond numeric's range (22003): no retry can store it."""
    good = rows_of(make_trades(["BTCUSDT"], 20))
    bad = (*good[0][:1], 21, Decimal("1E-20000"), *good[0][3:])
    sink = PostgresSink(settings.database)
    try:
        if stored_first:
            assert await sink.write(good[:10]) == 10  # so the COPY conflicts: staging path
        with pytest.raises(RowsRejected) as rejected:
            await sink.write([*good, bad])
        assert "22003" in str(rejected.value)
        assert "numeric" in str(rejected.value)
        assert len(await stored(settings)) == (10 if stored_first else 0)
        assert await sink.write(good) == (10 if stored_first else 20)  # the sink goes on
    finally:
        await sink.close()
    assert {(r["symbol"], r["trade_id"]) for r in await stored(settings)} == {
        ("BTCUSDT", i) for i in range(1, 21)
    }


async def test_a_check_violation_rejects_the_batch_naming_the_constraint(
    settings: Settings,
) -> None:
    await execute_sql(
        settings,
        "ALTER TABLE crypto_prices ADD CONSTRAINT price_below_a_million CHECK (price < 1000000)",
    )
    good = rows_of(make_trades(["ETHUSDT"], 5))
    bad = (*good[0][:1], 6, Decimal("2000000"), *good[0][3:])
    sink = PostgresSink(settings.database)
    try:
        with pytest.raises(RowsRejected) as rejected:
            await sink.write([*good, bad])
    finally:
        await sink.close()
    assert "23514" in str(rejected.value)
    assert "price_below_a_million" in str(rejected.value)
    assert await stored(settings) == []


async def test_a_read_only_database_is_retried_and_the_sink_reconnects_once_writable(
    settings: Settings,
) -> None:
    """As after a failover: the sink's connections are ended under it, and the server it reaches
    then answers but refuses every write (25006). Each write says so (SinkUnavailable, to be
    retried), never anything that would stop the consumer; once writable, the batch is stored."""
    name = await database_name(settings)
    trades = rows_of(make_trades(["SOLUSDT"], 30))
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(trades[:10]) == 10
        await execute_sql(
            settings,
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = on',
            # The sink's connections are new ones from now on: read-only.
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        for _ in range(5):  # the first ones may meet the ended connection: an outage
            with pytest.raises(SinkUnavailable) as refused:
                await sink.write(trades[10:])
            if "25006" in str(refused.value):
                break
        assert "25006" in str(refused.value), str(refused.value)
        await execute_sql(
            settings,
            "SET default_transaction_read_only = off",  # this session is read-only too
            f'ALTER DATABASE "{name}" RESET default_transaction_read_only',
        )
        assert await sink.write(trades[10:]) == 20
    finally:
        await sink.close()
    assert len(await stored(settings)) == 30
