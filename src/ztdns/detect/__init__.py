"""Threat detection at the DNS layer: tunnelling, DGAs, random-subdomain floods, rate limits, server cookies.

Owns: the detect stages (``stage.py``: after identify, and a fetch quota just before the resolver), the
detector state and its tick (``engine.py``), bounded sketches (``sketch.py``, ``tables.py``), the Public Suffix
List walk and name escaping (``names.py``), the DGA model (``dga.py``, data in ``ztdns/data/dga-model.txt``
trained by ``scripts/train_dga.py``), server cookies (``cookies.py``), verdicts and their texts
(``verdict.py``) and the shipped allow-list (``ztdns/data/detect-allow.txt``).
Config: ``[detect]`` (:class:`~ztdns.config.detect.DetectConfig`); docs/detect.md documents every key.
Metrics: ``ztdns_detect_verdicts_total{detector,action}``, ``ztdns_detect_answers_total{detector,action}``,
``ztdns_detect_keys{table}`` — no client data in labels.
Client data touched: identities, client addresses and question names, kept in bounded in-memory tables (keys
expire or are evicted); they leave the process only as detect events through the observe stage, escaped.

Per query the work is constant: a Public Suffix List walk, a few dictionary updates, a token bucket; anything
heavier (rates, ratios, verdicts) runs in a tick about once a second, scheduled after the answer is sent.
"""

from ztdns.detect.engine import Detector, Name, split_name

__all__ = ["Detector", "Name", "split_name"]
