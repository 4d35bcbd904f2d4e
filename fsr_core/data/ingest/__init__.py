"""Ingestion of real data sets into face-crop shards (readers are plain Python; stages run them on Ray Data)."""
