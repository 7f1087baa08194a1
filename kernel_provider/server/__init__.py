"""The jupyter_server side: REST requests → checks → env operations run as jobs; job progress out on the event bus."""
