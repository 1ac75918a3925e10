"""One search, start to finish (`python search/run.py` is its command): the pipeline and what
it calls, from the command line and the inputs to Ray, the tuner and the trial entry points."""
