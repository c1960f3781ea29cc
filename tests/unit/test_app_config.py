"""Faust's settings as the worker builds them."""

from __future__ import annotations

from pathlib import Path

import faust

from recstream.streams.app import faust_config
from recstream.streams.settings import Settings


def test_faust_files_live_under_data_dir(tmp_path: Path) -> None:
    """Faust's default datadir is '<app id>-data' in the working directory; the worker's
    goes under RECSTREAM_DATA_DIR so a worker started anywhere leaves nothing there."""
    settings = Settings(data_dir=tmp_path / "data", app_id="recstream-x")
    app = faust.App(settings.app_id, **faust_config(settings))
    datadir = Path(app.conf.datadir)
    assert datadir == tmp_path / "data" / "faust" / "recstream-x"
    assert Path(app.conf.tabledir).is_relative_to(datadir)
