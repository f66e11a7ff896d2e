"""The Kubernetes side of PolyServe: the SLOTier resource, its operator and the router's discovery.

* ``model``: the SLOTier spec and status (pydantic), the source of the CRD's schema;
* ``crd``: the CustomResourceDefinition generated from the model (``crds/``);
* ``resources``: pure functions from an SLOTier to its desired Deployment and Service, the labels
  and annotations the router selects and honours;
* ``reconcile``: one pass of the operator over one tier (validation, objects, replicas, drain,
  status), against a small API facade;
* ``handlers``: the kopf registry that runs those passes;
* ``discovery``: a FleetSpec source for the router that watches SLOTiers and Ready pods.
"""
