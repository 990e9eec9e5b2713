"""The store front: the page shell and static files served at `/`, and the server-side
rendering of model cards (markdown -> sanitised HTML). The pages are one small vanilla
JavaScript app (`static/app.js`) that reads the same HTTP API as the SDK."""
