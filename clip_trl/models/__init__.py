"""The dual encoders themselves: what differs between families (`families`), the small surface the library
uses (`modeling`), embedding images and texts by each family's rules (`encoding`), LoRA in both towers
(`lora`), WiSE-FT weight interpolation (`wise_ft`), and the check that a model name is a folder or a Hub id
that can be had, before any load (`locate`).
"""
