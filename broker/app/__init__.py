"""The application behind the service facade, split by what each part holds.

* :mod:`broker.app.values` - requests and answers the front ends exchange with it;
* :mod:`broker.app.issuer` - credentials: resolution, the mint wrapper, audit, watch;
* :mod:`broker.app.registries` - which connector answers docker for a registry host.

The connector view lives in :mod:`broker.catalog`; :mod:`broker.service` wires
these together and is what front ends call.
"""
