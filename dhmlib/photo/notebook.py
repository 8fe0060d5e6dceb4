"""Notebook 05's helpers: which photos to fit, an upload widget, a table of what was found."""
from __future__ import annotations

from pathlib import Path

from dhmlib.photo.image import find_images


def photo_inputs(image_paths: str, data_root, views: int = 1) -> list[Path]:
    """``image_paths`` (comma-separated files or folders) → image files; empty: ``views`` cameras of the first
    held-out frame of the capture in ``data_root`` (the smoke input: images with a known truth)."""
    if image_paths.strip():
        return find_images([p.strip() for p in image_paths.split(",") if p.strip()])
    from dhmlib.photo.evaluate import frame_images, held_out_frames

    frame = held_out_frames(data_root)[0]
    return list(frame_images(data_root, [frame], views)[frame])


def upload_widget(folder):
    """An ipywidgets ``FileUpload`` that saves the chosen photos into ``folder`` (re-run the cells below it to
    fit them); returns ``(widget, saved)`` where ``saved`` is the list of written paths (filled on upload)."""
    import ipywidgets as widgets  # deferred: the lab extra's widgets, only in an interactive notebook

    folder = Path(folder)
    saved: list[Path] = []
    up = widgets.FileUpload(accept="image/*", multiple=True, description="photos")
    out = widgets.Output()

    def on_change(change):
        folder.mkdir(parents=True, exist_ok=True)
        for f in change["new"]:
            p = folder / Path(f["name"]).name
            p.write_bytes(bytes(f["content"]))
            saved.append(p)
        with out:
            out.clear_output()
            print(f"saved {len(saved)} photo(s) in {folder}: set image_paths = {str(folder)!r} and re-run below")

    up.observe(on_change, names="value")
    return widgets.VBox([up, out]), saved


def detections_table(views, failures) -> str:
    """Markdown: one row per photo (hand found or why not)."""
    rows = ["| photo | hand | found by | hand size px | camera |", "| --- | --- | --- | --: | --- |"]
    for v in views:
        d = v.detection
        rows.append(f"| {v.photo.path.name} | {'right' if d.is_right else 'left'} ({d.handedness_score:.2f}) | "
                    f"{d.attempt} | {d.size_px:.0f} | {v.camera_note} |")
    for f in failures:
        rows.append(f"| {f.path.name} | {f.reason.split(': ', 1)[-1]} | | | |")
    return "\n".join(rows)
