"""``dhm synth``: write the virtual multi-camera capture in the official layout."""
from __future__ import annotations

import signal
import sys
import threading

from dhmlib.cli._common import SEED, CLIError, int_at_least, note, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = "write the virtual multi-camera capture in the official dataset layout"
DESCRIPTION = HELP + """

The default (200 frames × 24 cameras at 512×334) writes about 3.3 GB (mostly depth maps) in about
two minutes on a laptop CPU. Everything is staged under OUT/.synth-partial-<pid>/ and moved into
place at the end; a staging folder left by a killed run is removed by the next run (which says so).
"""


def add(p):
    from dhmlib.render.cameras import OFFICIAL_IMAGE_SIZE
    from dhmlib.synth.capture import OWNED

    p.description = DESCRIPTION
    p.add_argument("--out", help="dataset root to write the official layout into "
                                 "(default: $DHM_DATA, else the project's data/)")
    p.add_argument("--subjects", type=int_at_least(1), default=1, help="number of subjects (identities)")
    p.add_argument("--frames", type=int_at_least(1, 10000), default=200, help="frames per subject")
    p.add_argument("--cameras", type=int_at_least(1), default=24, help="cameras of the dome")
    p.add_argument("--seed", type=SEED, default=0, help="master seed (everything is deterministic in it)")
    p.add_argument("--vertices", type=int_at_least(200, 100_000), default=8000,
                   help="target vertex count of the hand")
    p.add_argument("--image-size", type=int_at_least(8), nargs=2, default=list(OFFICIAL_IMAGE_SIZE),
                   metavar=("H", "W"), help="image and depth-map size (official: 512 334)")
    p.add_argument("--workers", type=int_at_least(1), default=2, help="file-writing threads")
    p.add_argument("--no-forearm", action="store_true",
                   help="colour images of the hand alone, cut at the wrist (default: with a forearm, as a camera sees "
                        "it; depth maps are the hand's either way)")
    p.add_argument("--overwrite", action="store_true", help=f"replace existing {', '.join(OWNED)} under --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _terminate(signum, frame):
    # SIGTERM (kill, a closed CI job) ends like Ctrl-C, so the staging folder is removed on the way out
    raise KeyboardInterrupt


def run(args) -> int:
    from dhmlib.memory import keep_freed_memory
    from dhmlib.synth.capture import CaptureConfig, write_capture

    try:
        config = CaptureConfig(subjects=args.subjects, frames=args.frames, cameras=args.cameras, seed=args.seed,
                               vertices=args.vertices, image_size=tuple(args.image_size), workers=args.workers,
                               forearm=not args.no_forearm)
    except ValueError as e:
        raise CLIError(str(e)) from None
    from dhmlib.paths import data_dir

    out = data_dir(args.out)
    writable_folder(out)
    keep_freed_memory()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread and sys.platform != "win32" else None
    try:
        s = write_capture(out, config, overwrite=args.overwrite, progress=not args.quiet,
                          log=lambda msg: note(args.command, msg))
    except FileExistsError as e:
        raise CLIError(str(e)) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"wrote {s.root}: {s.subjects} subject(s) × {s.frames} frames × {s.cameras} cameras "
          f"({config.image_size[0]}×{config.image_size[1]}) in {s.seconds:.1f} s "
          f"({s.frames_per_second:.2f} frames/s)")
    return 0
