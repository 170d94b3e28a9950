"""The message limiter: never more than the rate in any 1 s window, smooth, FIFO, thread-safe."""

import threading
import unittest

from agent.ib.pacing import MessageLimiter


class FakeClock:
    """A clock that only moves when someone sleeps (single-threaded tests)."""

    def __init__(self, start=100.0):
        self.now = start

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def max_in_any_window(times, window=1.0):
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


class LimiterWindows(unittest.TestCase):
    def grant(self, rate, count, clock=None, between=0.0):
        clock = clock or FakeClock()
        limiter = MessageLimiter(rate, clock=clock, sleep=clock.sleep)
        granted = []
        for _ in range(count):
            limiter.acquire()
            granted.append(clock())
            clock.sleep(between)
        return granted

    def test_a_burst_is_spread_at_the_rate(self):
        for rate in (45, 50, 1, 2.5, 49.9):
            with self.subTest(rate=rate):
                granted = self.grant(rate, 300)
                self.assertLessEqual(max_in_any_window(granted), int(rate))
                self.assertEqual(max_in_any_window(granted), int(rate), "the full rate is used")
                # smooth: no two grants closer than 1/rate (no burst inside the window either)
                gaps = [b - a for a, b in zip(granted, granted[1:])]
                self.assertGreaterEqual(min(gaps), 1.0 / rate - 1e-9)

    def test_throughput_is_not_lower_than_the_rate(self):
        granted = self.grant(45, 451)
        self.assertAlmostEqual(granted[-1] - granted[0], 10.0, places=6)

    def test_an_idle_limiter_grants_at_once(self):
        clock = FakeClock()
        limiter = MessageLimiter(45, clock=clock, sleep=clock.sleep)
        limiter.acquire()
        clock.sleep(5.0)
        before = clock()
        limiter.acquire()
        self.assertEqual(clock(), before)

    def test_slow_callers_never_wait(self):
        granted = self.grant(10, 50, between=0.2)
        gaps = [b - a for a, b in zip(granted, granted[1:])]
        self.assertEqual(set(round(g, 9) for g in gaps), {0.2})

    def test_a_backlog_counts_in_the_window_from_when_tws_reads_it(self):
        """A TWS that stopped reading gets the messages sent before it stopped all at once when it
        resumes: with those 11 counted from then, what follows keeps TWS's window at the rate."""
        clock = FakeClock()
        limiter = MessageLimiter(45, clock=clock, sleep=clock.sleep)
        early = []
        for _ in range(11):
            limiter.acquire()
            early.append(clock())
        clock.sleep(20.0)  # TWS stalled; it reads the 11 now
        read_at = clock()
        limiter.backlog(11)
        later = []
        for _ in range(100):
            limiter.acquire()
            later.append(clock())
        self.assertEqual(max_in_any_window([read_at] * 11 + later), 45)

    def test_bad_rate(self):
        for rate in (0, -1, float("nan")):
            with self.assertRaises(ValueError):
                MessageLimiter(rate)


class LimiterThreads(unittest.TestCase):
    def test_concurrent_callers_share_one_window(self):
        limiter = MessageLimiter(400)  # real clock, fast rate: the test takes about a second
        slots, lock = [], threading.Lock()

        def worker():
            for _ in range(50):
                slot = limiter.acquire()
                with lock:
                    slots.append(slot)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(len(slots), 400)
        self.assertEqual(len(set(slots)), 400, "every caller gets its own slot")
        self.assertLessEqual(max_in_any_window(slots), 400)
        ordered = sorted(slots)
        self.assertGreaterEqual(min(b - a for a, b in zip(ordered, ordered[1:])), 1 / 400 - 1e-9)

    def test_interrupt_gives_up_the_wait(self):
        clock_limiter = MessageLimiter(1)
        closed = threading.Event()
        self.assertIsNotNone(clock_limiter.acquire(closed))
        results = []
        waiter = threading.Thread(target=lambda: results.append(clock_limiter.acquire(closed)))
        waiter.start()
        closed.set()
        waiter.join(5)
        self.assertFalse(waiter.is_alive())
        self.assertEqual(results, [None])


if __name__ == "__main__":
    unittest.main()
