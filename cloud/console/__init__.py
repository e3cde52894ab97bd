"""The GM's web console: server-rendered pages under ``/ui`` on the GM API's port.

Who calls it: ``cloud/api_server.py`` (``GMApiApp`` hands every ``/ui`` request to
``ConsoleApp``; ``ApiServer`` starts and stops the ``Watcher`` that drives the live updates).
The pages read through the same ``GMApi`` the HTTP API uses; docs/console.md says what each page
shows, how to log in and how the pages stay live.

* ``app``: the WSGI application (routing, forms, errors as pages);
* ``auth``: login sessions, roles, the CSRF field and the ``Origin`` check;
* ``pages``: what each page shows, gathered from the store, the GM's state and the KB;
* ``svg``: the geometry of the server-rendered plots (timeline, metrics, heat map);
* ``live``: the one watcher thread per GM and the server-sent event streams.
"""
