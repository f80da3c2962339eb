"""From dataset rows to model inputs: one row (`rows`), the image pipeline (`image_processing`), the batch
collator and row-indexed datasets (`collator`), webdataset shards (`shards`) and preference pairs
(`preference_pairs`).
"""
