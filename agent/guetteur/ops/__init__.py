"""The technician's and the system's tools: doctor, discovery, provisioning, updates, boards."""
