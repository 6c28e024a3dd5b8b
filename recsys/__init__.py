"""setrec: generative recommendation with set identifiers.

Import package of the ``setrec`` distribution. Command line: ``recsys --help``.
"""

__version__ = "0.1.0"
