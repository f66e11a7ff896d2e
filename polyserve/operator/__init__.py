"""The Kubernetes side of PolyServe: the SLOTier resource, its operator and the router's discovery.

* ``model``: the SLOTier spec and status (pydantic), the source of the CRD's schema;
* ``crd``: the CustomResourceDefinition generated from the model (``crds/``);
* ``resources``: pure functions from an SLOTier to its desired Deployment and Service, the labels
  and annotations the router selects and honours;
* ``views``: what a pass sees of a tier, and the seams of its plug-ins (autoscaler, stream probe);
* ``plan``: the pure decisions of a pass (spec checks, the replica owner, the safe scale-down
  plan, the status and its conditions);
* ``reconcile``: one pass of the operator over one tier, the I/O around ``plan`` against a small
  API facade (``kube``);
* ``autoscaling``: the multi-tier decision core stepped once per model on the router's state;
* ``handlers``: the kopf registry that runs those passes;
* ``discovery``: a FleetSpec source for the router that watches SLOTiers and Ready pods.
"""
