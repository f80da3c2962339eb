"""The dual encoders themselves: what differs between families (`families`), the small surface the library
uses (`modeling`), embedding images and texts by each family's rules (`encoding`), LoRA in both towers
(`lora`) and WiSE-FT weight interpolation (`wise_ft`).
"""
