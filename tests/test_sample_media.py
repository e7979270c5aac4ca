"""The sample pipeline writes small real media files (a PNG and a WAV) where the records say."""
import datetime as dt
import wave

from PIL import Image

from examples.sample_pipeline import iter_sample_runs
from execution_history import RunStore
from execution_history.media import resolve

NOW = dt.datetime(2025, 11, 20, tzinfo=dt.timezone.utc)


def media_items(record):
    return [i for i in record["items"] if i["file_path"]]


def test_sample_runs_write_real_png_and_wav_files(tmp_path):
    store = RunStore(tmp_path / "runs")
    media_root = tmp_path / "media"
    records = [store.load(i) for i in iter_sample_runs(4, store, 7, NOW, media_root=media_root)]
    stille = next(r for r in records if r["config_name"] == "stillepost")
    assert sorted(i["item_type"] for i in media_items(stille)) == ["output_audio", "output_image"]
    checked = 0
    for record in records:
        for item in media_items(record):
            found = resolve(item["file_path"], media_root)
            assert found is not None and found.path.is_relative_to(media_root / "exports" / "media")
            if found.kind == "image":
                with Image.open(found.path) as image:
                    image.verify()
                    assert image.format == "PNG"
            else:
                with wave.open(str(found.path)) as sound:
                    assert sound.getnframes() > 0 and sound.getnchannels() == 1
            checked += 1
    assert checked == 4  # Stille Post: image + audio; multi-output: image + audio


def test_without_a_media_root_only_the_paths_are_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path / "runs")
    records = [store.load(i) for i in iter_sample_runs(2, store, 7, NOW)]  # the old positional call
    assert all(media_items(r) for r in records)
    assert not (tmp_path / "exports").exists()


def test_cli_sample_writes_media_into_the_apps_media_dir(app, store, runs_dir):
    result = app.test_cli_runner().invoke(args=["runs", "sample", "4"])
    assert result.exit_code == 0, result.output
    media_root = runs_dir.parent / "media"  # the app fixture's RUN_HISTORY_MEDIA_DIR
    paths = [i["file_path"] for r in store.iter_records(store.list_ids()) for i in media_items(r)]
    assert len(paths) == 4 and all(resolve(p, media_root) is not None for p in paths)
