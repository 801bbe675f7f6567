"""Cross-border exchange: the International Patient Summary (IPS), generated and read.

``ips`` builds the IPS document of a record as the caller may see it (``Patient/[id]/$summary``)
and stores a GP's signed summary; ``reader`` understands IPS documents from elsewhere;
``profile`` checks the IPS rules the platform relies on. The eHDSI exchange (NCPeH) reuses them.
"""
