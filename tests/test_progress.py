import io

from graphrerank._progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_silent_when_not_a_terminal():
    s = io.StringIO()
    with Progress(5, "x", stream=s) as p:
        p.update(5)
    assert s.getvalue() == ""


def test_bar_on_a_terminal_and_callback():
    s = _Tty()
    calls = []
    with Progress(
        4, "offline", stream=s, callback=lambda d, t: calls.append((d, t)), min_interval=0
    ) as p:
        p.update(2)
        p.update(2)
    out = s.getvalue()
    assert "offline" in out
    assert "4/4" in out
    assert out.endswith("\n")
    assert calls == [(2, 4), (4, 4)]


def test_short_steps_draw_nothing_until_the_delay():
    import io

    quick = io.StringIO()
    with Progress(3, "quick", show=True, stream=quick, delay=60) as p:
        p.update(3)
    assert quick.getvalue() == ""
    slow = io.StringIO()
    with Progress(3, "slow", show=True, stream=slow, delay=0) as p:
        p.update(3)
    assert "slow [" in slow.getvalue() and slow.getvalue().endswith("\n")
