"""Runtime workers: a vendor runtime run in a process of its own, under the interpreter the
device profile names (JetPack's Python 3.6, Mendel's 3.7, an OpenVINO 2022.3 environment).

`program` is the worker itself (Python 3.6+, standard library, numpy and the vendor package
only); `proxy` is the agent's side, a Runtime plug-in that starts, feeds and restarts it.
"""
