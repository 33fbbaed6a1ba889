"""Per-key quotas: request rate (429 + Retry-After, which the client retries), k, query vectors,
body size and concurrent writes per table. Unit tests of the guard, then the live service."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import lancedb
import pytest

from lancedb_ray.api.quotas import QuotaGuard
from lancedb_ray.errors import RateLimited
from lancedb_ray.settings import ApiKey, Quotas, key_digest
from tests.support.api import ARROW_STREAM, RawClient, arrow_stream, make_rows, query_vector
from tests.support.service import LiveService
from tests.support.tenants import LIMITED, ONE_WRITER

KEY = ApiKey(name="k", sha256=key_digest("k"), databases=["*"])


def test_the_bucket_admits_a_burst_then_the_rate() -> None:
    guard, quotas = QuotaGuard(), Quotas(requests_per_second=1000, burst=3)
    for _ in range(3):
        guard.admit(KEY, quotas)
    with pytest.raises(RateLimited) as refused:
        for _ in range(50):  # faster than 1000/s refills: the bucket runs dry
            guard.admit(KEY, quotas)
    assert refused.value.status_code == 429 and refused.value.retry_after == 1
    deadline = time.monotonic() + 5
    while True:  # refilled within a few milliseconds
        try:
            guard.admit(KEY, quotas)
            break
        except RateLimited:
            assert time.monotonic() < deadline
    guard.admit(KEY, Quotas(requests_per_second=0))  # 0: no limit
    other = ApiKey(name="other", sha256=key_digest("o"), databases=["*"])
    guard.admit(other, quotas)  # buckets are per key


def test_write_slots_per_key_and_table() -> None:
    guard, quotas = QuotaGuard(), Quotas(concurrent_writes_per_table=1)
    with guard.write_slot(KEY, quotas, "db", "t"):
        with pytest.raises(RateLimited, match="in progress on table 't'"):
            with guard.write_slot(KEY, quotas, "db", "t"):
                pass
        with guard.write_slot(KEY, quotas, "db", "u"):  # another table: its own slots
            pass
    with guard.write_slot(KEY, quotas, "db", "t"):  # released
        pass


@pytest.fixture
def limited(live_service: LiveService) -> Iterator[tuple[str, RawClient]]:
    database = f"limited{uuid.uuid4().hex[:8]}"
    live_service.connect(database).create_table("t", make_rows(20))
    client = RawClient(live_service, database, api_key=LIMITED)
    yield database, client
    client.close()


@pytest.mark.ray
def test_over_the_rate_is_429_with_retry_after_and_the_client_retries(
    live_service: LiveService, limited
) -> None:
    database, client = limited
    statuses = [client.post("/v1/table/t/count_rows/", json_body={}) for _ in range(8)]
    refused = [r for r in statuses if r.status_code == 429]
    assert refused, [r.status_code for r in statuses]  # 2 per second, burst 2, over 2 replicas
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "requests per second" in refused[0].json()["message"]
    assert all(r.status_code in (200, 429) for r in statuses)
    table = lancedb.connect(f"db://{database}", api_key=LIMITED,
                            host_override=live_service.url).open_table("t")
    assert [table.count_rows() for _ in range(6)] == [20] * 6  # retried, never failed


@pytest.mark.ray
def test_k_vectors_and_body_size_over_the_keys_quota(limited) -> None:
    _, client = limited

    def patient(send):  # past the rate quota: wait as the client would
        while (response := send()).status_code == 429:
            time.sleep(int(response.headers["retry-after"]))
        return response

    too_many = patient(lambda: client.query("t", {"vector": query_vector(), "k": 51}))
    assert too_many.status_code == 400 and "limit of 50" in too_many.text
    vectors = patient(lambda: client.query("t", {"vector": [query_vector()] * 3, "k": 5}))
    assert vectors.status_code == 400 and "3 query vectors" in vectors.text
    assert patient(lambda: client.query("t", {"vector": query_vector(), "k": 50})).status_code == 200
    big = patient(lambda: client.insert("t", make_rows(2_000, start=100)))
    assert big.status_code == 413 and "limit" in big.text


def _trickle(seconds: float, body: bytes) -> Iterator[bytes]:
    steps = 10
    size = len(body) // steps + 1
    for i in range(steps + 1):
        time.sleep(seconds / steps)
        yield body[i * size:(i + 1) * size]


@pytest.mark.ray
def test_concurrent_writes_per_table_over_the_quota_are_429(live_service: LiveService,
                                                             limited) -> None:
    database, _ = limited
    statuses: list[tuple[int, str]] = []
    headers = {"x-api-key": ONE_WRITER, "x-lancedb-database": database,
               "content-type": ARROW_STREAM}

    def slow_insert(start: int) -> None:
        with httpx.Client(timeout=60) as http:
            response = http.post(f"{live_service.url}/v1/table/t/insert/", headers=headers,
                                 content=_trickle(3.0, arrow_stream(make_rows(2, start=start))))
            statuses.append((response.status_code, response.text))

    # three writes in flight at once over two replicas: one replica holds two of them
    writers = [threading.Thread(target=slow_insert, args=(1000 + 10 * i,)) for i in range(3)]
    for writer in writers:
        writer.start()
        time.sleep(0.2)
    for writer in writers:
        writer.join()
    codes = sorted(code for code, _ in statuses)
    assert codes[0] == 200 and 429 in codes, statuses
    assert all("in progress on table 't'" in text for code, text in statuses if code == 429)
    admitted = codes.count(200)
    count = RawClient(live_service, database).post("/v1/table/t/count_rows/", json_body={})
    assert count.json() == 20 + 2 * admitted
