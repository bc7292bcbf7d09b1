from runinfra_webhooks.service.cli.main import main

main()
