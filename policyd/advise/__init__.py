"""`policyd advise`: least-privilege NetworkPolicies from observed flows (`propose`), proven
with the policy engine before anything is enforced (`prove`)."""
