"""`sdgen web`: a dashboard and JSON API over the data directory (issue 21).

app.py builds the Starlette application (pages, actions, files); api.py the JSON API;
look.py the queue as status sees it, with rates; actions.py the writes (the CLI's spool
functions); gallery.py and thumbnails.py the images; guard.py who may write and which paths
may be served. Templates and static files are package data: no build step, no CDN.
"""
