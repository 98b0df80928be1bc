"""The platform's own tools: onboarding tenants from their specs (:mod:`.onboard`), the secrets it
generates (:mod:`.secrets`), and the doctor that checks every cluster and tenant."""
