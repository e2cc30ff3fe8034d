"""Protocol servers that know nothing of OTLP: HTTP/2 (`h2`: framing, stream states, flow
control, limits), HPACK (`hpack`) and HTTP/1.1 (`http1`, on httptools). The OTLP receiver
(`otlp_ingest.receiver`) sits on top of them; nothing here imports it."""
