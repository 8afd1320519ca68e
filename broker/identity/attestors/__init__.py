"""Workload attestation: which container, and which Kubernetes pod, a local caller is.

A Unix-socket caller's uid says little on a node where many containers share
uid 0, 1000 or 65532. When the config file has an ``[attestors]`` section the
daemon, for each local connection (gRPC) or request (helper socket), takes the
peer pid from ``SO_PEERCRED``, finds its container in ``/proc/PID/cgroup``
(:mod:`broker.identity.cgroups`) and asks the configured attestors about it:

- :mod:`.docker`: the Docker Engine API (aiodocker) inspects the container:
  ``docker:label:K:V``, ``docker:image_id:…``, ``docker:image:NAME``,
  ``docker:env:NAME`` (names only, never values);
- :mod:`.kubernetes`: this node's pods, from the API server or the kubelet
  (kubernetes-asyncio), find the pod whose status lists the container:
  ``k8s:ns:``, ``k8s:sa:``, ``k8s:pod-label:K:V``, ``k8s:pod-name:``,
  ``k8s:pod-uid:``, ``k8s:container-name:``, ``k8s:node-name:``.

Their selectors, with ``container:ID``, are added to the principal's
(:class:`.attestation.Attestation`). Without an ``[attestors]`` section none of
this runs: not a file read, not an import.
"""
