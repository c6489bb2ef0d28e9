import io
import sys

from vitprune.progress import min_interval


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_redraw_rarely_in_a_log_file_and_smoothly_in_a_terminal(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert min_interval() == 30.0
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert min_interval() == 0.1
