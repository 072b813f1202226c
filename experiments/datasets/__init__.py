"""The data: the real data sets' loaders (`data`), the generated data (`synthetic_images`,
`synthetic_text`) and the pretraining of the transfer experiments' source networks
(`pretraining`) with its cache (`pretrained_cache`).
"""
