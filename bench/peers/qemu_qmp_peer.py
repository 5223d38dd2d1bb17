#!/usr/bin/env python3
"""The bench's peer: QEMU's own Python QMP library (python3-qemu-qmp), on the
same QEMU, the same kind of socket and the same commands as the harness's
client. Prints one JSON object: per-command latencies (ms) and throughput."""
import asyncio
import json
import sys
import time

from qemu.qmp import QMPClient


async def main(path: str, sequential: int, concurrent: int) -> None:
    qmp = QMPClient("bench")
    await qmp.connect(path)
    for _ in range(50):  # warm-up, like the harness side
        await qmp.execute("query-status")
    lat = []
    for _ in range(sequential):
        t = time.perf_counter()
        await qmp.execute("query-status")
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    await asyncio.gather(*(qmp.execute("query-status") for _ in range(concurrent)))
    secs = time.perf_counter() - t
    await qmp.disconnect()
    print(json.dumps({"latenciesMs": lat, "throughput": concurrent / secs}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
