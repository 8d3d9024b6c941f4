"""What every tool's ``__main__`` shares: ``app.run`` without TensorFlow's INFO chatter.

Under ``absl.app.run`` the verbosity defaults to INFO, so TensorFlow's Python
INFO records (checkpoint sharding times, SavedModel asset paths, each printed
twice: by TensorFlow's handler and by absl's) bury the tool's own output. The
tools print what they do themselves; warnings and errors still show, and
``--verbosity=0`` brings the INFO records back.
"""

from absl import app, flags, logging


def run(main):
    """``app.run(main)``, at WARNING verbosity unless ``--verbosity`` is given."""
    def quiet_main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return main(argv)
    app.run(quiet_main)
