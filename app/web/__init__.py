"""The template studio web page: server-rendered HTML over the same Studio the API uses."""
