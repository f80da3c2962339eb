"""From dataset rows to model inputs: one row (`rows`), the image pipeline (`image_processing`, with `simd_jpeg`,
the SIMD backend of its JPEG draft decoding), the batch
collator and row-indexed datasets (`collator`), webdataset shards (`shards`) and preference pairs
(`preference_pairs`).
"""
