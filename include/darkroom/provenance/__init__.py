"""Provenance that readers outside Darkroom understand, and tracing a file back.

- ``xmp``: the XMP packet (Dublin Core, IPTC's DigitalSourceType, a ``darkroom:`` namespace)
  written into every original and derivative, and swapped for the approved one at publish;
- ``credentials``: C2PA Content Credentials (c2pa-python): signing, reading, the local test CA;
- ``watermark``: the invisible mark (invisible-watermark's RivaGAN) carrying a key derived
  from the asset id, for files whose metadata is gone;
- ``signing``: signs approved derivatives for publication and records them in the catalog;
- ``verify``: ``darkroom verify FILE``: every piece of evidence in a file, matched to the
  catalog, and the six answers about where it came from;
- ``bench``: ``darkroom bench provenance``.

``xmp`` needs only the standard library, so the base modules (``darkroom.imaging``) may
import it; the others are imported where they are used.
"""
