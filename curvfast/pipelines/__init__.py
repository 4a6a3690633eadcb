"""The research pipelines, one package per CLI command (``curvfast <command>``).

Each package imports the core library (``curvfast``) and :mod:`curvfast.pipelines.common`, never
another pipeline. ``COMMANDS`` names them in the order ``curvfast --help`` lists them.
"""
COMMANDS = ("mia", "memorization", "verifix", "ood", "pkd", "idkd", "transfer")
