"""Provenance that readers outside Darkroom understand: pure work on files and keys, no
catalog (the layers: docs/architecture.md).

- ``xmp``: the XMP packet (Dublin Core, IPTC's DigitalSourceType, a ``darkroom:`` namespace)
  written into every original and derivative, and swapped for the approved one at publish;
  standard library only, so the base layer's ``darkroom.imaging`` imports it;
- ``credentials``: C2PA Content Credentials (c2pa-python): signing, reading, the local test CA;
- ``watermark``: the invisible mark (invisible-watermark's RivaGAN and dwtDctSvd) carrying a
  key derived from the asset id, for files whose metadata is gone;
- ``evidence``: everything a file carries about its origin, and how close it comes to a
  catalogued file.

What uses them against the catalog is stage-level: ``darkroom.stages.sign`` seals approved
derivatives at publish, ``darkroom.stages.verify`` is ``darkroom verify FILE``;
``darkroom.devtools.bench_provenance`` is ``darkroom bench provenance``.
"""
