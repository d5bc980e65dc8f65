//! How MIC and NMI talk to Azure: ARM, the metadata service, Azure AD, and cloud configuration.
