"""Readers in the loop: a blind real-vs-synthetic reader study and a teaching gallery.

``synthlearn node reader-study`` serves one local page (FastAPI + uvicorn, bound to loopback
unless the admin gives ``--host`` with an access token). Modules, in the order data flows:

* :mod:`.study`: which real test images and synthetic images make up a study (frozen once);
* :mod:`.storage`: the study, its readers and their answers in SQLite in the site directory;
* :mod:`.statistics`: accuracy with Wilson 95 % CIs, the verdict in words, the numbers-only
  summary that ``node export`` may sign into the bundle;
* :mod:`.session`: one study, tying the three together for the server and the CLI;
* :mod:`.gallery`: synthetic images only, by class, new ones from the site's generator, and
  contact sheets;
* :mod:`.server`: the HTTP API and the static page (``static/``), nothing else.
"""
