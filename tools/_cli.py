"""What every tool's ``__main__`` shares: ``app.run`` with readable output.

* Under ``absl.app.run`` the verbosity defaults to INFO, so TensorFlow's Python
  INFO records (checkpoint sharding times, SavedModel asset paths, each printed
  twice: by TensorFlow's handler and by absl's) bury the tool's own output. The
  tools print what they do themselves; warnings and errors still show, and
  ``--verbosity=0`` brings the INFO records back.
* TensorFlow's C++ INFO records (the CPU-feature notice at import, a note each
  time a record reader starts) are off too: this module sets
  ``TF_CPP_MIN_LOG_LEVEL=1`` unless it is set, which works only before TensorFlow
  loads, so every tool imports it before anything that imports TensorFlow.
  ``TF_CPP_MIN_LOG_LEVEL=0`` brings them back. So are the INFO records TensorFlow
  writes while it loads, before it honours the level (``tf_volpose._startup``).
* The library reports bad input (a path, a field, a value) as ``ValueError`` or
  ``OSError`` (and the converters as ``ConversionError``) with a message that
  names it: the tool prints that message as one ``error: ...`` line and exits
  with status 1, instead of a traceback.
"""

import os
import sys

from tf_volpose import _startup

_startup.import_tensorflow_quietly()  # sets TF_CPP_MIN_LOG_LEVEL=1 unless it is set

from absl import app, flags, logging  # noqa: E402

from tf_volpose import _files  # noqa: E402


def run(main, errors=()):
    """``app.run(main)`` at WARNING verbosity unless ``--verbosity`` is given.

    Args:
      errors: exception types besides ``ValueError`` and ``OSError`` that mean
        bad input, reported as one line.
    """
    def readable_main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except (ValueError, OSError) + tuple(errors) as e:
            print(f"error: {_files.error_message(e)}", file=sys.stderr)
            sys.exit(1)
    app.run(readable_main)


def sequence_progress():
    """A converter's ``progress(done, total, summary)``: a progress bar over its
    sequences, with the records written so far."""
    import keras  # the tools that convert need it; the others load faster without
    bar = {}

    def progress(done, total, summary):
        bar.setdefault("bar", keras.utils.Progbar(total, unit_name="sequence"))
        bar["bar"].update(done, [("records", sum(summary["written"].values()))])
    return progress


def report_conversion(summary, output_dir, skipped="frames skipped"):
    """Prints a converter's summary and, when it wrote training records, writes their
    mean bone lengths beside them (``bone_lengths.json``, which root-depth fits read)."""
    from tf_volpose import bone_lengths
    print(f"records written: {summary['written']}")
    print(f"{skipped}: {summary['skipped'] or 'none'}")
    if summary["written"].get("train"):
        print(f"wrote {bone_lengths.write(os.path.join(output_dir, 'train-*'))}")
